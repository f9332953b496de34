from t2i.models.text import TextEncoderConfig, build_text_encoder, load_tokenizer, tokenize


def test_clip_tokenizer_ids_match_clip():
    tok = load_tokenizer()
    assert tok("a photo of an astronaut riding a horse").input_ids == [
        49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 49407]
    assert len(tok) == 49408


def test_tokenize_pads_with_eos_to_max_length():
    tok = load_tokenizer(max_length=32)
    ids = tokenize(tok, ["a red circle", ""])
    assert ids.shape == (2, 32)
    assert ids[0, :6].tolist() == [49406, 320, 736, 7117, 49407, 49407]
    assert ids[1, 0] == 49406 and (ids[1, 1:] == 49407).all()


def test_text_encoder_shapes():
    import torch

    cfg = TextEncoderConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    enc = build_text_encoder(cfg)
    out = enc(torch.tensor([[49406, 320, 49407] + [49407] * 29])).last_hidden_state
    assert out.shape == (1, 32, 32) and torch.isfinite(out).all()

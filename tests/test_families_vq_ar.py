"""VQGAN first stage and the autoregressive code transformer: tiny configs, seconds on a CPU."""
import math

import pytest
import torch

from t2i.checkpoints.diffusers_folder import ModelLoadError
from t2i.checkpoints.family_file import load_family_file, save_family_file
from t2i.models.ar import (ARConfig, CodeTransformer, apply_temperature, complete_codes, generate_images,
                           next_token_probs, sample_codes, top_k_filter, top_p_filter)
from t2i.models.vqgan import (VQGAN, DiscriminatorConfig, PatchDiscriminator, VQGANConfig, VQGANLoss,
                              VQGANLossConfig, adaptive_weight, codebook_usage, usage_from_codes)


def tiny_vqgan_config(**kw):
    return VQGANConfig(**{**dict(resolution=16, block_out_channels=(16, 16), code_dim=8, num_codes=32,
                                 norm_num_groups=8), **kw})


def tiny_ar_config(conditioning="none", **kw):
    names = ("red circle", "blue square", "green triangle") if conditioning == "class" else ()
    return ARConfig(**{**dict(num_codes=32, code_shape=(4, 4), conditioning=conditioning, class_names=names,
                              text_max_length=8, text_embed_dim=8, n_embd=32, n_layer=2, n_head=2), **kw})


def tiny_disc():
    return PatchDiscriminator(DiscriminatorConfig(channels=8, layers=2, norm_groups=4))


def images(n=4, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def shapes_images(n=8, size=16):
    import numpy as np

    from t2i.data.shapes import ShapesDataset

    data = ShapesDataset(n, seed=0, resolution=size)
    return torch.from_numpy(np.stack([np.asarray(data[i]["image"]) for i in range(n)])).permute(0, 3, 1, 2) / 127.5 - 1


def gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


# -- VQGAN ---------------------------------------------------------------------------------------
def test_vqgan_shapes_finite_and_codes_roundtrip():
    torch.manual_seed(0)
    model = VQGAN(tiny_vqgan_config())
    x = images()
    out = model(x)
    assert out.recon.shape == x.shape and torch.isfinite(out.recon).all()
    assert out.codes.shape == (4, 8, 8) and model.code_shape == (8, 8)
    assert out.codes.dtype == torch.long and 0 <= out.codes.min() and out.codes.max() < 32
    assert torch.equal(model.encode_codes(x), out.codes)
    # decoding the codes gives the forward pass's reconstruction (straight-through adds ~1e-7)
    torch.testing.assert_close(model.decode_codes(out.codes), out.recon, atol=1e-5, rtol=0)
    # codebook and commitment terms are the same distance, measured towards different sides
    assert out.codebook_loss.item() == pytest.approx(out.commitment_loss.item())
    with pytest.raises(ValueError, match="codes must lie"):
        model.decode_codes(torch.full((1, 8, 8), 32))


def test_vqgan_gradients_reach_every_part():
    torch.manual_seed(0)
    model, disc = VQGAN(tiny_vqgan_config()), tiny_disc()
    objective = VQGANLoss(VQGANLossConfig(disc_start=0))
    x = images()
    out = model(x)
    loss, logs = objective.generator_loss(model, out, x, disc, step=0)
    assert torch.isfinite(loss) and {"rec", "codebook", "commit", "g_gan", "lambda_"} <= set(logs)
    loss.backward()
    for part in (model.vq.encoder.conv_in, model.vq.decoder.conv_out, model.vq.quantize.embedding):
        assert part.weight.grad is not None and part.weight.grad.abs().sum() > 0
    d_loss, _ = objective.discriminator_loss(disc, x, out.recon)
    disc.zero_grad()
    d_loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in disc.parameters())
    assert disc(x).shape == (4, 1, 2, 2)  # one logit per patch


def test_discriminator_is_off_before_disc_start():
    torch.manual_seed(0)
    model, disc = VQGAN(tiny_vqgan_config()), tiny_disc()
    objective = VQGANLoss(VQGANLossConfig(disc_start=5))
    x = images()
    out = model(x)
    before, logs = objective.generator_loss(model, out, x, disc, step=4)
    after, logs_after = objective.generator_loss(model, out, x, disc, step=5)
    assert "g_gan" not in logs and "g_gan" in logs_after
    assert before.item() == pytest.approx(logs["rec"] + logs["codebook"] + 0.25 * logs["commit"], rel=1e-5)


def test_adaptive_weight_balances_the_gradient_norms():
    torch.manual_seed(0)
    last = torch.nn.Parameter(torch.randn(8))
    x = torch.randn(8)
    rec = (last * x).abs().sum()
    for scale in (0.1, 10.0):
        gan = scale * (last ** 2).sum()
        lam = adaptive_weight(rec, gan, last)
        g_rec = torch.autograd.grad(rec, last, retain_graph=True)[0]
        g_gan = torch.autograd.grad(lam * gan, last, retain_graph=True)[0]
        # after weighting, the GAN term pulls on the last layer as hard as the reconstruction
        assert g_gan.norm().item() == pytest.approx(g_rec.norm().item(), rel=1e-3)
    assert not lam.requires_grad


def test_perceptual_term_needs_a_network():
    with pytest.raises(ValueError, match="ships none offline"):
        VQGANLoss(VQGANLossConfig(perceptual_weight=1.0))

    class L2(torch.nn.Module):
        def forward(self, a, b):
            return (a - b).pow(2).mean(dim=(1, 2, 3))

    torch.manual_seed(0)
    model = VQGAN(tiny_vqgan_config())
    x = images()
    out = model(x)
    plain, _ = VQGANLoss(VQGANLossConfig(disc_start=10**9)).generator_loss(model, out, x, None, 0)
    weighted = VQGANLoss(VQGANLossConfig(perceptual_weight=2.0, disc_start=10**9), L2())
    with_p, _ = weighted.generator_loss(model, out, x, None, 0)
    assert with_p.item() == pytest.approx(plain.item() + 2.0 * (x - out.recon).pow(2).mean().item(), rel=1e-5)


def test_vqgan_save_load_exact_and_strict(tmp_path):
    torch.manual_seed(0)
    model = VQGAN(tiny_vqgan_config()).eval()
    save_family_file(model, tmp_path / "vq.safetensors")
    loaded = load_family_file(VQGAN, tmp_path / "vq.safetensors")
    assert loaded.config == model.config
    x = images()
    assert torch.equal(loaded(x).recon, model(x).recon)
    with pytest.raises(ModelLoadError, match="holds a 'vqgan' model, not a 'ar' one"):
        load_family_file(CodeTransformer, tmp_path / "vq.safetensors")
    # a file whose tensors do not match its embedded config is refused, not half-loaded
    from t2i.checkpoints.family_file import save_model_file

    save_model_file(tmp_path / "bad.safetensors", "vqgan", {**vars(tiny_vqgan_config())},
                    VQGAN(tiny_vqgan_config(num_codes=16)).state_dict())
    with pytest.raises(ModelLoadError, match="does not match"):
        load_family_file(VQGAN, tmp_path / "bad.safetensors")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_family_file(VQGAN, tmp_path / "missing.safetensors")


def test_vqgan_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = VQGAN(tiny_vqgan_config())
    objective = VQGANLoss(VQGANLossConfig(disc_start=10**9))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x = shapes_images()
    losses = []
    for _ in range(20):
        loss, _ = objective.generator_loss(model, model(x), x, None, 0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_codebook_usage_numbers():
    used, perplexity = usage_from_codes(torch.tensor([0, 0, 1, 1]), num_codes=4)
    assert used == 0.5 and perplexity == pytest.approx(2.0)
    used, perplexity = usage_from_codes(torch.tensor([0, 1, 2, 3, 3, 3]), num_codes=8)
    p = torch.tensor([1, 1, 1, 3]) / 6
    assert used == 0.5 and perplexity == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    # a collapsed codebook: every vector equal, so every position maps to code 0
    torch.manual_seed(0)
    model = VQGAN(tiny_vqgan_config())
    with torch.no_grad():
        model.vq.quantize.embedding.weight.zero_()
    used, perplexity = codebook_usage(model, images(), batch_size=3)
    assert used == 1 / 32 and perplexity == pytest.approx(1.0)


# -- sampling hyper-parameters -------------------------------------------------------------------
def test_top_p_keeps_the_smallest_set_reaching_p():
    # sorted masses before each token, row 0: 0 (1), .5 (3), .75 (2), .9 (0); row 1: 0 (2), .4 (1), .66 (0), .88 (3)
    probs = torch.tensor([[0.1, 0.5, 0.15, 0.25], [0.22, 0.26, 0.4, 0.12]])
    logits = probs.log()

    def kept(p):
        return [set(torch.nonzero(torch.isfinite(row)).flatten().tolist()) for row in top_p_filter(logits, p)]

    assert kept(0.3) == [{1}, {2}]
    assert kept(0.6) == [{1, 3}, {2, 1}]
    assert kept(0.8) == [{1, 3, 2}, {2, 1, 0}]
    assert kept(0.95) == [{0, 1, 2, 3}, {0, 1, 2, 3}]
    assert kept(1.0) == [{0, 1, 2, 3}, {0, 1, 2, 3}]
    # the kept tokens keep their logits; renormalised they sum to 1
    filtered = top_p_filter(logits, 0.6)[0]
    assert filtered[1] == logits[0, 1] and filtered.softmax(-1)[[1, 3]].sum() == pytest.approx(1.0)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="top_p"):
            top_p_filter(logits, bad)


def test_top_k_and_temperature():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [[False, True, True, False]]
    assert torch.equal(top_k_filter(logits, 0), logits)
    probs = next_token_probs(logits, temperature=2.0)
    torch.testing.assert_close(probs, (logits / 2).softmax(-1))
    cold, warm = next_token_probs(logits, 0.1), next_token_probs(logits, 10.0)
    assert cold[0, 1] > 0.99 and warm.max() - warm.min() < 0.1  # sharper / flatter
    assert torch.equal(apply_temperature(logits, 1.0), logits)
    with pytest.raises(ValueError, match="temperature"):
        next_token_probs(logits, temperature=0.0)


# -- the transformer ---------------------------------------------------------------------------
@pytest.mark.parametrize("conditioning", ["none", "class", "text"])
def test_ar_shapes_gradients_and_cached_equals_uncached(conditioning):
    torch.manual_seed(0)
    model = CodeTransformer(tiny_ar_config(conditioning))
    conditions = {"none": [None] * 3, "class": ["red circle", 2, "blue square"],
                  "text": ["a red circle", "a small blue square in the top left", ""]}[conditioning]
    cond = model.condition_ids(conditions)
    assert cond.shape == (3, model.config.prefix_len)
    codes = torch.randint(0, 32, (3, 16), generator=torch.Generator().manual_seed(1))
    logits = model(cond, codes)
    assert logits.shape == (3, 16, 32) and torch.isfinite(logits).all()
    model.loss(cond, codes).backward()
    assert next(model.cond_embed.parameters()).grad.abs().sum() > 0
    assert model.gpt.transformer.h[0].attn.c_attn.weight.grad.abs().sum() > 0
    model.zero_grad()
    cached = sample_codes(model, cond, gens([5, 6, 7]), use_cache=True, top_p=0.9)
    plain = sample_codes(model, cond, gens([5, 6, 7]), use_cache=False, top_p=0.9)
    assert torch.equal(cached, plain)
    assert cached.shape == (3, 16) and cached.max() < 32
    # image i of a batch equals a single run with its own generator
    single = sample_codes(model, cond[1:2], gens([6]), top_p=0.9)
    assert torch.equal(single[0], cached[1])
    assert not torch.equal(cached[0], sample_codes(model, cond[:1], gens([99]), top_p=0.9)[0])


def test_top_k_1_is_greedy_and_ignores_the_seed():
    torch.manual_seed(0)
    model = CodeTransformer(tiny_ar_config()).eval()
    cond = model.condition_ids([None])
    a = sample_codes(model, cond, gens([1]), top_k=1)
    b = sample_codes(model, cond, gens([2]), top_k=1, use_cache=False)
    assert torch.equal(a, b)
    greedy = torch.zeros(1, 0, dtype=torch.long)
    with torch.no_grad():
        for _ in range(16):
            logits = model.gpt(inputs_embeds=model.embed(cond, greedy)).logits[:, -1]
            greedy = torch.cat([greedy, logits.argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(a, greedy)


def test_completion_keeps_the_given_codes():
    torch.manual_seed(0)
    model = CodeTransformer(tiny_ar_config("class"))
    cond = model.condition_ids([0, 1])
    given = torch.randint(0, 32, (2, 4, 4), generator=torch.Generator().manual_seed(3))
    out = complete_codes(model, cond, given, keep_rows=2, generators=gens([0, 1]))
    assert out.shape == (2, 4, 4) and torch.equal(out[:, :2], given[:, :2])
    assert not torch.equal(out[:, 2:], given[:, 2:])
    again = complete_codes(model, cond, given, keep_rows=2, generators=gens([0, 1]), use_cache=False)
    assert torch.equal(out, again)
    with pytest.raises(ValueError, match="keep_rows"):
        complete_codes(model, cond, given, keep_rows=5, generators=gens([0, 1]))


def test_ar_bad_input_errors():
    model = CodeTransformer(tiny_ar_config("class"))
    with pytest.raises(ValueError, match="unknown class 'purple'"):
        model.condition_ids(["purple"])
    with pytest.raises(ValueError, match="one generator per image"):
        sample_codes(model, model.condition_ids([0, 1]), gens([0]))
    with pytest.raises(ValueError, match="must be set"):
        CodeTransformer(ARConfig())


def test_ar_save_load_exact_and_few_steps_lower_the_loss(tmp_path):
    torch.manual_seed(0)
    model = CodeTransformer(tiny_ar_config("text"))
    cond = model.condition_ids(["a red circle", "a blue square"] * 2)
    codes = torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(20):
        loss = model.loss(cond, codes)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    save_family_file(model.eval(), tmp_path / "ar.safetensors")
    loaded = load_family_file(CodeTransformer, tmp_path / "ar.safetensors")
    assert loaded.config == model.config
    assert torch.equal(loaded(cond, codes), model(cond, codes))
    assert loaded.gpt.lm_head.weight.data_ptr() == loaded.gpt.transformer.wte.weight.data_ptr()  # still tied
    with pytest.raises(ModelLoadError, match="holds a 'ar' model, not a 'vqgan' one"):
        load_family_file(VQGAN, tmp_path / "ar.safetensors")


def test_generate_images_through_the_vqgan():
    torch.manual_seed(0)
    vqgan = VQGAN(tiny_vqgan_config(resolution=8)).eval()  # 4x4 codes
    model = CodeTransformer(tiny_ar_config())
    out = generate_images(model, vqgan, [None, None], seeds=[0, 1], top_k=8)
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="matching first stage"):
        generate_images(model, VQGAN(tiny_vqgan_config()), [None], seeds=[0])

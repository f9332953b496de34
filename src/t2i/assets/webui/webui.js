// t2i web UI: what Gradio has no component for. Hover hints from the schema (window.t2iHints),
// Ctrl+Enter to generate, Ctrl+Up/Down to change the attention weight of the selected text,
// extra network cards, the Generate button's "Generate forever" menu, and dropping an image on
// a prompt to read its parameters. Everything works on elements found by their ids, so a Gradio
// update that re-renders a component keeps working.
(function () {
  "use strict";

  function byId(id) { return document.getElementById(id); }
  function visible(el) { return el && el.offsetParent !== null; }

  // Gradio listens to `input` events: set a textbox's value so that Gradio sees it.
  function setValue(textarea, value) {
    textarea.value = value;
    textarea.dispatchEvent(new Event("input", { bubbles: true }));
  }

  function activeTab() {
    for (const name of ["txt2img", "img2img"]) {
      if (visible(byId(name + "_generate")) || visible(byId(name + "_interrupt"))) return name;
    }
    return null;
  }

  // ------------------------------------------------------------------ hover hints
  let hintTimer = null;
  function applyHints() {
    hintTimer = null;
    const hints = window.t2iHints || {};
    for (const id in hints) {
      const el = byId(id);
      if (!el || el.dataset.t2iHint === "1" || !hints[id]) continue;
      el.title = hints[id];
      el.querySelectorAll("input, textarea, button, label, span").forEach((child) => {
        if (!child.title) child.title = hints[id];
      });
      el.dataset.t2iHint = "1";
    }
  }
  function scheduleHints() { if (!hintTimer) hintTimer = setTimeout(applyHints, 200); }

  // ------------------------------------------------------------------ keyboard
  // Ctrl+Up / Ctrl+Down: (text:1.1) <-> (text:1.2) ..., as the web UI's edit-attention.
  const STEP = 0.1;
  function editAttention(area, up) {
    const text = area.value;
    let start = area.selectionStart, end = area.selectionEnd;
    if (start === end) {  // no selection: the (...) around the cursor, or the word under it
      const open = text.lastIndexOf("(", start - 1), close = text.indexOf(")", start);
      const closeBefore = text.lastIndexOf(")", start - 1);
      if (open >= 0 && close >= 0 && open > closeBefore) { start = open + 1; end = close; }
      else {
        while (start > 0 && !/[\s,()\[\]]/.test(text[start - 1])) start--;
        while (end < text.length && !/[\s,()\[\]]/.test(text[end])) end++;
      }
      if (start === end) return false;
    }
    let inner = text.slice(start, end), weight = 1.0, from = start, to = end;
    const own = /^(.*):(-?\d+(?:\.\d+)?)$/s.exec(inner);
    if (text[start - 1] === "(" && own && text[end] === ")") {  // "cat:1.1" selected inside its brackets
      inner = own[1]; weight = parseFloat(own[2]); from = start - 1; to = end + 1;
    } else if (text[start - 1] === "(") {
      const after = /^:(-?\d+(?:\.\d+)?)\)/.exec(text.slice(end));  // "cat" selected in "(cat:1.1)"
      if (after) { weight = parseFloat(after[1]); from = start - 1; to = end + after[0].length; }
      else if (text[end] === ")") { weight = 1.1; from = start - 1; to = end + 1; }  // "(cat)" is 1.1
    }
    weight = Math.round((weight + (up ? STEP : -STEP)) * 100) / 100;
    const replacement = weight === 1 ? inner : "(" + inner + ":" + String(weight) + ")";
    area.value = text.slice(0, from) + replacement + text.slice(to);
    const selStart = from + (weight === 1 ? 0 : 1);
    area.setSelectionRange(selStart, selStart + inner.length);
    area.dispatchEvent(new Event("input", { bubbles: true }));
    return true;
  }

  function onKey(event) {
    const ctrl = event.ctrlKey || event.metaKey;
    if (!ctrl) return;
    if (event.key === "Enter") {
      const tab = activeTab();
      const button = tab && byId(tab + "_generate");
      if (visible(button)) { event.preventDefault(); button.click(); }
      return;
    }
    if (event.key === "ArrowUp" || event.key === "ArrowDown") {
      const area = event.target;
      if (area && area.tagName === "TEXTAREA" && area.closest("[id$='_prompt']")) {
        if (editAttention(area, event.key === "ArrowUp")) event.preventDefault();
      }
    }
  }

  // ------------------------------------------------------------------ extra network cards
  function onCardClick(event) {
    const card = event.target.closest(".t2i-card");
    if (!card) return;
    const tab = card.dataset.tab, kind = card.dataset.kind, value = card.dataset.insert;
    if (kind === "checkpoint") {
      const pick = document.querySelector("#t2i_checkpoint_pick textarea, #t2i_checkpoint_pick input");
      if (pick) setValue(pick, value);
      return;
    }
    const area = document.querySelector("#" + tab + "_prompt textarea");
    if (!area) return;
    const current = area.value;
    if (current.includes(value)) {  // a second click removes it, as in the web UI
      setValue(area, current.replace(value, "").replace(/\s*,\s*,/g, ",").replace(/^[\s,]+|[\s,]+$/g, ""));
    } else {
      const sep = current.trim() === "" || /[\s,]$/.test(current) ? "" : " ";
      setValue(area, current + sep + value);
    }
  }

  // ------------------------------------------------------------------ Generate forever menu
  let menu = null;
  function closeMenu() { if (menu) { menu.remove(); menu = null; } }
  function onContextMenu(event) {
    const button = event.target.closest("[id$='_generate'], [id$='_interrupt'], [id$='_skip']");
    if (!button) return;
    const tab = button.id.replace(/_(generate|interrupt|skip)$/, "");
    if (!byId(tab + "_forever_on")) return;
    event.preventDefault();
    closeMenu();
    menu = document.createElement("div");
    menu.className = "t2i-context-menu";
    menu.id = tab + "_generate_menu";
    for (const [label, id] of [["Generate forever", "_forever_on"], ["Cancel generate forever", "_forever_off"]]) {
      const item = document.createElement("button");
      item.type = "button";
      item.textContent = label;
      item.id = tab + "_menu" + id;
      item.addEventListener("click", () => {
        closeMenu();
        byId(tab + id).click();
        if (id === "_forever_on") setTimeout(() => { const g = byId(tab + "_generate"); if (visible(g)) g.click(); }, 300);
      });
      menu.appendChild(item);
    }
    menu.style.left = event.pageX + "px";
    menu.style.top = event.pageY + "px";
    document.body.appendChild(menu);
  }

  // ------------------------------------------------------------------ drop an image on a prompt
  // The image goes to the tab's hidden image input, whose change event reads its parameters.
  function onDrop(event) {
    const area = event.target.closest && event.target.closest("[id$='_prompt']");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (!area || !files || !files.length || !files[0].type.startsWith("image/")) return;
    const tab = area.id.replace(/_prompt$/, "").replace(/_negative$/, "");
    const input = document.querySelector("#" + tab + "_prompt_image input[type=file]");
    if (!input) return;
    event.preventDefault();
    event.stopPropagation();
    const transfer = new DataTransfer();
    transfer.items.add(files[0]);
    input.files = transfer.files;
    input.dispatchEvent(new Event("change", { bubbles: true }));
  }

  window.t2iStart = function () {
    if (window.t2iStarted) return;
    window.t2iStarted = true;
    document.addEventListener("keydown", onKey, true);
    document.addEventListener("click", (event) => { onCardClick(event); if (menu && !menu.contains(event.target)) closeMenu(); });
    document.addEventListener("contextmenu", onContextMenu);
    document.addEventListener("drop", onDrop, true);
    document.addEventListener("dragover", (event) => {
      if (event.target.closest && event.target.closest("[id$='_prompt']")) event.preventDefault();
    }, true);
    new MutationObserver(scheduleHints).observe(document.body, { childList: true, subtree: true });
    applyHints();
  };
  window.t2iEditAttention = editAttention;  // for tests
})();

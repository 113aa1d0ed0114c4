// Grounding overlay view. Boxes come in 0–1000 of the image and are placed in percent, so they
// stay on their objects at any width. The kernel owns the data; this view writes only `hidden`
// (legend clicks) and `hovered` (pointer), and shows `readout`, which the kernel computes.

function render({ model, el }) {
  el.classList.add("wb-overlay");
  const caption = document.createElement("div");
  caption.className = "wb-overlay-caption";
  const stage = document.createElement("div");
  stage.className = "wb-overlay-stage";
  const img = document.createElement("img");
  img.alt = "image with boxes";
  const layer = document.createElement("div");
  layer.className = "wb-overlay-layer";
  stage.append(img, layer);
  const legend = document.createElement("div");
  legend.className = "wb-overlay-legend";
  const readout = document.createElement("div");
  readout.className = "wb-overlay-readout";
  el.append(caption, stage, legend, readout);

  function drawImage() {
    img.src = model.get("src");
    caption.textContent = model.get("caption");
    caption.style.display = model.get("caption") ? "" : "none";
  }

  // Hover only restyles the existing boxes: rebuilding them under the pointer would fire
  // mouseleave/mouseenter again and again.
  function drawHover() {
    const hovered = model.get("hovered");
    for (const div of layer.children) div.classList.toggle("wb-hovered", Number(div.dataset.index) === hovered);
  }

  function drawReadout() {
    const boxes = model.get("boxes");
    readout.textContent = model.get("readout") || (boxes.length ? "Point at a box for its coordinates." : "No boxes.");
  }

  function drawBoxes() {
    const boxes = model.get("boxes");
    const hidden = new Set(model.get("hidden"));
    layer.replaceChildren();
    boxes.forEach((b, i) => {
      if (hidden.has(b.label)) return;
      const [x1, y1, x2, y2] = b.box;
      const div = document.createElement("div");
      div.className = "wb-box" + (b.kind === "truth" ? " wb-truth" : "");
      div.dataset.index = String(i);
      div.dataset.label = b.label;
      div.dataset.kind = b.kind;
      Object.assign(div.style, {
        left: x1 / 10 + "%", top: y1 / 10 + "%",
        width: Math.max(0, x2 - x1) / 10 + "%", height: Math.max(0, y2 - y1) / 10 + "%",
        borderColor: b.color,
      });
      const tag = document.createElement("span");
      tag.className = "wb-box-label";
      tag.textContent = b.label;
      tag.style.background = b.color;
      div.append(tag);
      div.addEventListener("mouseenter", () => { model.set("hovered", i); model.save_changes(); });
      div.addEventListener("mouseleave", () => { model.set("hovered", -1); model.save_changes(); });
      layer.append(div);
    });
    legend.replaceChildren();
    const seen = new Map();
    boxes.forEach((b) => { if (!seen.has(b.label)) seen.set(b.label, b.color); });
    seen.forEach((color, label) => {
      const item = document.createElement("button");
      item.className = "wb-legend-item" + (hidden.has(label) ? " wb-off" : "");
      item.dataset.label = label;
      item.title = hidden.has(label) ? "show these boxes" : "hide these boxes";
      const swatch = document.createElement("span");
      swatch.className = "wb-swatch";
      swatch.style.background = color;
      item.append(swatch, document.createTextNode(label));
      item.addEventListener("click", () => {
        const now = new Set(model.get("hidden"));
        now.has(label) ? now.delete(label) : now.add(label);
        model.set("hidden", [...now]);
        model.save_changes();
      });
      legend.append(item);
    });
    drawHover();
    drawReadout();
  }

  drawImage();
  drawBoxes();
  model.on("change:src", drawImage);
  model.on("change:caption", drawImage);
  model.on("change:boxes", drawBoxes);
  model.on("change:hidden", drawBoxes);
  model.on("change:hovered", drawHover);
  model.on("change:readout", drawReadout);
}

export default { render };

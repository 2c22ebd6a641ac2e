// vaelab serve: the latent-space explorer's page. Plain JavaScript, canvas only, no libraries.
"use strict";

const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const STEPS = 8; // images per segment of the interpolation between two pins
const MAX_PINS = 6;
const state = { models: [], panels: [], highlight: -1, drawing: null };
window.vaelab = state; // for a notebook's or a test's eyes

// ------------------------------------------------------------------------------------------------ helpers

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch("/api/" + path, options);
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

const png = (text) => "data:image/png;base64," + text;
const fmt = (v) => (Math.abs(v) < 1e-9 ? "0" : v.toFixed(2));
const dot = (a, b) => a.reduce((s, v, i) => s + v * b[i], 0);
const unit = (d, i) => Array.from({ length: d }, (_, k) => (k === i ? 1 : 0));

function chol2(c) {
  // Cholesky factor of a 2 x 2 covariance [[a, b], [b, d]]
  const a = Math.max(c[0][0], 1e-12);
  const l11 = Math.sqrt(a);
  const l21 = c[0][1] / l11;
  const l22 = Math.sqrt(Math.max(c[1][1] - l21 * l21, 1e-12));
  return [[l11, 0], [l21, l22]];
}

function principalAxes(points, d) {
  // the two leading principal directions of the points (power iteration with deflation)
  const n = points.length;
  const mean = new Array(d).fill(0);
  for (const p of points) for (let k = 0; k < d; k++) mean[k] += p[k] / n;
  const cov = Array.from({ length: d }, () => new Array(d).fill(0));
  for (const p of points) {
    for (let i = 0; i < d; i++) {
      const di = p[i] - mean[i];
      for (let j = 0; j < d; j++) cov[i][j] += (di * (p[j] - mean[j])) / n;
    }
  }
  const axes = [];
  for (let a = 0; a < 2; a++) {
    let v = Array.from({ length: d }, (_, k) => 1 / Math.sqrt(d) + 0.01 * k);
    for (let it = 0; it < 200; it++) {
      let w = cov.map((row) => dot(row, v));
      for (const u of axes) { const s = dot(w, u); w = w.map((x, k) => x - s * u[k]); }
      const norm = Math.sqrt(dot(w, w)) || 1;
      v = w.map((x) => x / norm);
    }
    axes.push(v);
  }
  return { mean, axes };
}

// ------------------------------------------------------------------------------------------------ a panel

class Panel {
  constructor(root, index) {
    this.root = root;
    this.index = index;
    this.el = (sel) => root.querySelector(sel);
    this.plot = this.el("canvas.plot");
    this.ctx = this.plot.getContext("2d");
    this.layer = document.createElement("canvas"); // the scatter, drawn once per view
    this.rot = this.el("canvas.rot");
    this.pins = [];
    this.pointer = null;
    this.inflight = false;
    this.pending = null;
    this.decodes = 0;
    this.drawn = null;
    this.angles = { yaw: 0.6, pitch: 0.35 };
    this.setupCanvas(this.plot);
    this.setupCanvas(this.rot);
    this.plot.addEventListener("pointermove", (e) => this.onMove(e));
    this.plot.addEventListener("pointerleave", () => { this.pointer = null; this.redraw(); });
    this.plot.addEventListener("click", (e) => this.onClick(e));
    this.el(".clear-pins").addEventListener("click", () => { this.pins = []; this.updatePins(); });
    this.el(".sample-button").addEventListener("click", () => this.sample());
    this.el(".traverse-button").addEventListener("click", () => this.traverse());
    this.el(".model-select").addEventListener("change", (e) => this.setModel(e.target.value));
    this.setupRotation();
  }

  setupCanvas(canvas) {
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.width, h = canvas.height;
    canvas.style.width = w + "px";
    canvas.style.height = h + "px";
    canvas.width = Math.round(w * ratio);
    canvas.height = Math.round(h * ratio);
    canvas.getContext("2d").setTransform(ratio, 0, 0, ratio, 0, 0);
    canvas.cssSize = [w, h];
  }

  status(text, error = false) {
    const p = this.el(".panel-status");
    p.textContent = text;
    p.classList.toggle("error", error);
  }

  async setModel(name) {
    this.root.dataset.ready = "";
    this.info = state.models.find((m) => m.name === name);
    this.el(".model-select").value = name;
    this.pins = [];
    this.drawn = null;
    this.decodes = 0;
    this.root.dataset.model = name;
    this.root.dataset.decodes = "0";
    delete this.root.dataset.drawnMean;
    const d = this.info.latent_dim;
    const test = this.info.test && this.info.test.total ? `, test −ELBO ${this.info.test.total.toFixed(1)} nats` : "";
    this.el(".model-info").textContent =
      `${d}-D latent, ${this.info.prior.kind === "gaussian" ? "Gaussian" : this.info.prior.kind} prior, ${this.info.dataset}${test}`;
    this.scatter = await api(`models/${encodeURIComponent(name)}/scatter`);
    this.position = new Map(this.scatter.indices.map((k, i) => [k, i]));
    if (this.scatter.note) this.status("no scatter: " + this.scatter.note);
    this.pca = d > 3 && this.scatter.means.length ? principalAxes(this.scatter.means, d) : null;
    this.view = { mode: "dims", dims: this.activeDims(), origin: this.priorLoc() };
    this.buildControls();
    this.el(".rot-figure").style.display = d === 3 ? "" : "none";
    this.setView();
    this.updatePins();
    this.el(".samples").textContent = "";
    this.el(".traversal").textContent = "";
    const traverse = this.el(".traverse-dim");
    traverse.textContent = "";
    for (let k = 0; k < d; k++) traverse.add(new Option("z" + k, String(k)));
    this.lastZ = null;
    this.el(".drawn-recon").removeAttribute("src");
    this.el(".drawn-text").textContent = "draw a digit";
    if (state.drawing) this.encode(state.drawing);
    this.root.dataset.ready = "1";
  }

  activeDims() {
    // beyond 3-D, the plane starts on the two dimensions whose means vary most (the study's z0, z1 below)
    const d = this.info.latent_dim, means = this.scatter.means;
    if (d <= 3 || !means.length) return [0, 1];
    const spread = [...Array(d).keys()].map((k) => {
      let s = 0, s2 = 0;
      for (const z of means) { s += z[k]; s2 += z[k] * z[k]; }
      return [s2 / means.length - (s / means.length) ** 2, k];
    });
    spread.sort((a, b) => b[0] - a[0]);
    return [spread[0][1], spread[1][1]].sort((a, b) => a - b);
  }

  priorLoc() {
    const d = this.info.latent_dim;
    return this.info.prior.loc ? this.info.prior.loc.slice() : new Array(d).fill(0);
  }

  // ---------------------------------------------------------------------------------------- the view

  buildControls() {
    const box = this.el(".controls");
    box.textContent = "";
    const d = this.info.latent_dim;
    if (d < 3) return;
    const select = (label, value, onChange) => {
      const wrap = document.createElement("label");
      wrap.textContent = label + " ";
      const s = document.createElement("select");
      for (let k = 0; k < d; k++) s.add(new Option("z" + k, String(k)));
      s.value = String(value);
      s.addEventListener("change", () => onChange(Number(s.value)));
      wrap.appendChild(s);
      box.appendChild(wrap);
      return s;
    };
    if (d > 3 && this.pca) {
      const wrap = document.createElement("label");
      const check = document.createElement("input");
      check.type = "checkbox";
      check.className = "pca-toggle";
      check.addEventListener("change", () => {
        this.view.mode = check.checked ? "pca" : "dims";
        this.buildSliders();
        this.setView();
      });
      wrap.append(check, "principal directions");
      box.appendChild(wrap);
    }
    select("x", this.view.dims[0], (k) => this.chooseDim(0, k));
    select("y", this.view.dims[1], (k) => this.chooseDim(1, k));
    this.sliderBox = document.createElement("div");
    this.sliderBox.className = "controls sliders";
    box.appendChild(this.sliderBox);
    this.buildSliders();
  }

  chooseDim(axis, k) {
    const dims = this.view.dims.slice();
    if (dims[1 - axis] === k) dims[1 - axis] = dims[axis]; // swap rather than show one dimension twice
    dims[axis] = k;
    this.view.dims = dims;
    this.buildControls();
    this.setView();
  }

  buildSliders() {
    const box = this.sliderBox;
    if (!box) return;
    box.textContent = "";
    if (this.view.mode === "pca") {
      box.textContent = "the plane of the two principal directions of the latent means, through their mean";
      return;
    }
    const d = this.info.latent_dim;
    const loc = this.priorLoc();
    for (let k = 0; k < d; k++) {
      if (this.view.dims.includes(k)) continue;
      const wrap = document.createElement("label");
      const slider = document.createElement("input");
      slider.type = "range";
      slider.min = String(loc[k] - 3);
      slider.max = String(loc[k] + 3);
      slider.step = "0.05";
      slider.value = String(this.view.origin[k]);
      slider.className = "slider slider-z" + k;
      const value = document.createElement("span");
      value.textContent = fmt(this.view.origin[k]);
      slider.addEventListener("input", () => {
        this.view.origin[k] = Number(slider.value);
        value.textContent = fmt(this.view.origin[k]);
        this.setView(true);
      });
      wrap.append(d === 3 ? `cross-section z${k} =` : `z${k}`, slider, value);
      box.appendChild(wrap);
    }
  }

  setView(sliderMoved = false) {
    // the plane shown: z = origin + a e1 + b e2
    const d = this.info.latent_dim;
    const v = this.view;
    if (v.mode === "pca") {
      v.plane = { origin: this.pca.mean.slice(), e1: this.pca.axes[0], e2: this.pca.axes[1] };
    } else {
      const origin = v.origin.slice();
      origin[v.dims[0]] = 0;
      origin[v.dims[1]] = 0;
      v.plane = { origin, e1: unit(d, v.dims[0]), e2: unit(d, v.dims[1]) };
    }
    if (!sliderMoved || !v.range) v.range = this.fitRange();
    this.drawLayer();
    this.redraw();
    this.drawRotation();
    this.requestGrid();
    if (this.pointer) this.decodeAt(this.pointer);
    const names = v.mode === "pca" ? ["PC1", "PC2"] : v.dims.map((k) => "z" + k);
    this.el(".axis-note").textContent = `horizontal ${names[0]}, vertical ${names[1]}` +
      (d === 3 && v.mode === "dims" ? "; points shaded by their distance from the plane" : "") +
      (d > 3 ? "; the points are the means projected onto the plane" : "");
  }

  project(z) {
    const p = this.view.plane;
    const rel = z.map((x, k) => x - p.origin[k]);
    return [dot(rel, p.e1), dot(rel, p.e2)];
  }

  toLatent(a, b) {
    const p = this.view.plane;
    return p.origin.map((o, k) => o + a * p.e1[k] + b * p.e2[k]);
  }

  fitRange() {
    // a square window over the points' projections and the prior's 2σ, with a margin
    let lo = [Infinity, Infinity], hi = [-Infinity, -Infinity];
    const take = (q) => { for (let k = 0; k < 2; k++) { lo[k] = Math.min(lo[k], q[k]); hi[k] = Math.max(hi[k], q[k]); } };
    for (const z of this.scatter.means) take(this.project(z));
    const g = this.priorGaussian2();
    if (g) {
      const sx = 2 * Math.sqrt(g.cov[0][0]), sy = 2 * Math.sqrt(g.cov[1][1]);
      take([g.mean[0] - sx, g.mean[1] - sy]);
      take([g.mean[0] + sx, g.mean[1] + sy]);
    }
    if (!isFinite(lo[0])) { lo = [-3, -3]; hi = [3, 3]; }
    const cx = (lo[0] + hi[0]) / 2, cy = (lo[1] + hi[1]) / 2;
    const half = 1.06 * Math.max(hi[0] - lo[0], hi[1] - lo[1], 0.5) / 2;
    return { x: [cx - half, cx + half], y: [cy - half, cy + half] };
  }

  priorGaussian2() {
    const prior = this.info.prior;
    if (prior.kind !== "gaussian") return null;
    const p = this.view.plane;
    const E = [p.e1, p.e2];
    const mean = this.project(prior.loc);
    const cov = E.map((u) => E.map((w) => dot(u, prior.cov.map((row) => dot(row, w)))));
    return { mean, cov };
  }

  toPixel(q) {
    const [w, h] = this.plot.cssSize;
    const r = this.view.range;
    return [((q[0] - r.x[0]) / (r.x[1] - r.x[0])) * w, ((r.y[1] - q[1]) / (r.y[1] - r.y[0])) * h];
  }

  fromPixel(px, py) {
    const [w, h] = this.plot.cssSize;
    const r = this.view.range;
    return [r.x[0] + (px / w) * (r.x[1] - r.x[0]), r.y[1] - (py / h) * (r.y[1] - r.y[0])];
  }

  drawLayer() {
    const [w, h] = this.plot.cssSize;
    const ratio = this.plot.width / w;
    this.layer.width = this.plot.width;
    this.layer.height = this.plot.height;
    const ctx = this.layer.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const d = this.info.latent_dim;
    const v = this.view;
    const others = v.mode === "dims" ? [...Array(d).keys()].filter((k) => !v.dims.includes(k)) : [];
    this.pixels = new Float32Array(this.scatter.means.length * 2);
    this.scatter.means.forEach((z, i) => {
      const [x, y] = this.toPixel(this.project(z));
      this.pixels[2 * i] = x;
      this.pixels[2 * i + 1] = y;
      let alpha = 0.55;
      if (others.length === 1) {
        let gap = 0;
        for (const k of others) gap += (z[k] - v.origin[k]) ** 2;
        alpha = 0.06 + 0.6 * Math.exp(-gap / 0.25);
      }
      ctx.globalAlpha = alpha;
      ctx.fillStyle = COLORS[this.scatter.labels[i] % COLORS.length];
      ctx.fillRect(x - 1.5, y - 1.5, 3, 3);
    });
    ctx.globalAlpha = 1;
    this.drawPrior(ctx);
  }

  drawPrior(ctx) {
    const g = this.priorGaussian2();
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 1.2;
    if (g) {
      [1, 2].forEach((k) => {
        ctx.setLineDash(k === 1 ? [] : [6, 4]);
        this.ellipse(ctx, g.mean, g.cov, k);
        ctx.stroke();
      });
    } else if (this.info.latent_dim === 2) {
      for (const c of this.info.prior.contours) {
        ctx.setLineDash(c.mass === "39%" ? [] : [6, 4]);
        for (const line of c.lines) {
          ctx.beginPath();
          line.forEach((q, i) => { const [x, y] = this.toPixel(q); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
          ctx.stroke();
        }
      }
    }
    ctx.setLineDash([]);
  }

  ellipse(ctx, mean, cov, k) {
    const L = chol2(cov);
    ctx.beginPath();
    for (let t = 0; t <= 64; t++) {
      const c = Math.cos((2 * Math.PI * t) / 64), s = Math.sin((2 * Math.PI * t) / 64);
      const q = [mean[0] + k * L[0][0] * c, mean[1] + k * (L[1][0] * c + L[1][1] * s)];
      const [x, y] = this.toPixel(q);
      t ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
    }
  }

  redraw() {
    const ctx = this.ctx;
    const [w, h] = this.plot.cssSize;
    ctx.clearRect(0, 0, w, h);
    ctx.drawImage(this.layer, 0, 0, w, h);
    // the test image highlighted in every panel
    const at = this.position ? this.position.get(state.highlight) : undefined;
    if (at !== undefined) {
      ctx.strokeStyle = "#000";
      ctx.lineWidth = 2;
      ctx.beginPath();
      ctx.arc(this.pixels[2 * at], this.pixels[2 * at + 1], 7, 0, 2 * Math.PI);
      ctx.stroke();
    }
    // pins and the path between them
    if (this.pins.length) {
      ctx.strokeStyle = "#333";
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      this.pins.forEach((z, i) => { const [x, y] = this.toPixel(this.project(z)); i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
      ctx.stroke();
      this.pins.forEach((z, i) => {
        const [x, y] = this.toPixel(this.project(z));
        ctx.fillStyle = "#fff";
        ctx.beginPath();
        ctx.arc(x, y, 8, 0, 2 * Math.PI);
        ctx.fill();
        ctx.stroke();
        ctx.fillStyle = "#000";
        ctx.font = "bold 11px sans-serif";
        ctx.textAlign = "center";
        ctx.textBaseline = "middle";
        ctx.fillText(String(i + 1), x, y);
      });
    }
    // the drawn digit's posterior: mean and 1σ / 2σ ellipses in this plane
    if (this.drawn) {
      const p = this.view.plane;
      const E = [p.e1, p.e2];
      const mean = this.project(this.drawn.mean);
      const cov = E.map((u) => E.map((v) => dot(u, this.drawn.cov.map((row) => dot(row, v)))));
      ctx.strokeStyle = "#d00";
      ctx.lineWidth = 2;
      [1, 2].forEach((k) => {
        ctx.setLineDash(k === 1 ? [] : [4, 3]);
        this.ellipse(ctx, mean, cov, k);
        ctx.stroke();
      });
      ctx.setLineDash([]);
      const [x, y] = this.toPixel(mean);
      ctx.fillStyle = "#d00";
      ctx.beginPath();
      ctx.moveTo(x, y - 8); ctx.lineTo(x + 7, y + 5); ctx.lineTo(x - 7, y + 5); ctx.closePath();
      ctx.fill();
    }
    if (this.pointer) {
      const [x, y] = this.pointer;
      ctx.strokeStyle = "rgba(0,0,0,0.5)";
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(x - 10, y); ctx.lineTo(x + 10, y); ctx.moveTo(x, y - 10); ctx.lineTo(x, y + 10);
      ctx.stroke();
    }
  }

  // ---------------------------------------------------------------------------------------- pointer

  pointerAt(e) {
    const rect = this.plot.getBoundingClientRect();
    return [e.clientX - rect.left, e.clientY - rect.top];
  }

  onMove(e) {
    this.pointer = this.pointerAt(e);
    this.decodeAt(this.pointer);
    // the nearest test image within 6 pixels is highlighted in every panel
    let best = -1, bestD = 36;
    const [px, py] = this.pointer;
    for (let i = 0; i < this.pixels.length / 2; i++) {
      const dx = this.pixels[2 * i] - px, dy = this.pixels[2 * i + 1] - py;
      const dd = dx * dx + dy * dy;
      if (dd < bestD) { bestD = dd; best = i; }
    }
    const index = best >= 0 ? this.scatter.indices[best] : -1;
    if (index !== state.highlight) {
      state.highlight = index;
      for (const p of state.panels) if (p !== this && p.info) p.redraw();
    }
    this.redraw();
  }

  decodeAt(pixel) {
    const q = this.fromPixel(pixel[0], pixel[1]);
    this.decode(this.toLatent(q[0], q[1]));
  }

  decode(z) {
    // one request in flight; the latest point waits its turn, the ones in between are dropped
    if (this.inflight) { this.pending = z; return; }
    this.inflight = true;
    const model = this.info.name;
    api(`models/${encodeURIComponent(model)}/decode`, { z: [z] })
      .then((out) => {
        if (model !== this.info.name) return;
        this.el("img.decoded").src = png(out.images[0]);
        this.lastZ = z;
        this.el(".decoded-z").textContent = "z = (" + z.slice(0, 6).map(fmt).join(", ") + (z.length > 6 ? ", …)" : ")");
        this.decodes += 1;
        this.root.dataset.decodes = String(this.decodes);
      })
      .catch((err) => this.status(err.message, true))
      .finally(() => {
        this.inflight = false;
        if (this.pending) { const next = this.pending; this.pending = null; this.decode(next); }
      });
  }

  onClick(e) {
    const q = this.fromPixel(...this.pointerAt(e));
    if (this.pins.length >= MAX_PINS) this.pins.shift();
    this.pins.push(this.toLatent(q[0], q[1]));
    this.updatePins();
  }

  async updatePins() {
    this.redraw();
    const strip = this.el(".interpolation");
    const title = this.el(".strip-title");
    this.root.dataset.pins = String(this.pins.length);
    if (this.pins.length < 2) {
      strip.textContent = "";
      title.textContent = this.pins.length ? "pin another point to see the interpolation" : "pins: click the plot to pin points";
      return;
    }
    const z = [];
    for (let s = 0; s + 1 < this.pins.length; s++) {
      const a = this.pins[s], b = this.pins[s + 1];
      for (let t = s ? 1 : 0; t <= STEPS; t++) z.push(a.map((x, k) => x + ((b[k] - x) * t) / STEPS));
    }
    try {
      const out = await api(`models/${encodeURIComponent(this.info.name)}/decode`, { z });
      title.textContent = `interpolation through ${this.pins.length} pins (straight lines in z)`;
      strip.textContent = "";
      for (const image of out.images) {
        const img = new Image();
        img.src = png(image);
        strip.appendChild(img);
      }
    } catch (err) {
      this.status(err.message, true);
    }
  }

  async traverse() {
    // one latent dimension swept over the prior's ±3σ, the others held at the last decoded point
    const k = Number(this.el(".traverse-dim").value);
    const base = this.lastZ || this.toLatent(0, 0);
    const prior = this.info.prior;
    const centre = prior.loc ? prior.loc[k] : 0;
    const sd = prior.cov ? Math.sqrt(prior.cov[k][k]) : 1;
    const z = Array.from({ length: 13 }, (_, i) => base.map((x, j) => (j === k ? centre + sd * (-3 + i / 2) : x)));
    try {
      const out = await api(`models/${encodeURIComponent(this.info.name)}/decode`, { z });
      this.showStrip(this.el(".traversal"), out.images);
    } catch (err) {
      this.status(err.message, true);
    }
  }

  showStrip(strip, images) {
    strip.textContent = "";
    for (const image of images) {
      const img = new Image();
      img.src = png(image);
      strip.appendChild(img);
    }
  }

  async sample() {
    try {
      const out = await api(`models/${encodeURIComponent(this.info.name)}/sample`, { n: 16, seed: Math.floor(Math.random() * 1e9) });
      const strip = this.el(".samples");
      strip.textContent = "";
      for (const image of out.images) {
        const img = new Image();
        img.src = png(image);
        strip.appendChild(img);
      }
    } catch (err) {
      this.status(err.message, true);
    }
  }

  // ---------------------------------------------------------------------------------------- decoded grid

  requestGrid() {
    clearTimeout(this.gridTimer);
    this.gridTimer = setTimeout(() => this.fetchGrid(), 120);
  }

  async fetchGrid() {
    const v = this.view, p = v.plane;
    const model = this.info.name;
    const key = JSON.stringify([model, p, v.range]);
    if (key === this.gridKey) return;
    this.gridKey = key;
    try {
      const out = await api(`models/${encodeURIComponent(model)}/grid`, {
        origin: p.origin, axes: [p.e1, p.e2], x: v.range.x, y: v.range.y, n: 15,
      });
      if (key !== this.gridKey) return;
      this.el("img.grid-image").src = png(out.image);
      const d = this.info.latent_dim;
      const fixed = v.mode === "dims" ? [...Array(d).keys()].filter((k) => !v.dims.includes(k)) : [];
      let caption = "decoded 15 × 15 grid over the plot's window";
      if (v.mode === "pca") caption += " (principal plane)";
      else if (d === 3) caption = `cross-section at z${fixed[0]} = ${fmt(v.origin[fixed[0]])}: ` + caption;
      else if (fixed.length) caption += ` at ${fixed.map((k) => `z${k} = ${fmt(v.origin[k])}`).join(", ")}`;
      this.el(".grid-caption").textContent = caption;
    } catch (err) {
      this.status(err.message, true);
    }
  }

  // ---------------------------------------------------------------------------------------- 3-D view

  setupRotation() {
    let drag = null;
    this.rot.addEventListener("pointerdown", (e) => {
      drag = [e.clientX, e.clientY];
      this.rot.setPointerCapture(e.pointerId);
    });
    this.rot.addEventListener("pointerup", () => { drag = null; });
    this.rot.addEventListener("pointermove", (e) => {
      if (!drag || !this.info) return;
      this.angles.yaw += (e.clientX - drag[0]) * 0.01;
      this.angles.pitch = Math.max(-1.5, Math.min(1.5, this.angles.pitch + (e.clientY - drag[1]) * 0.01));
      drag = [e.clientX, e.clientY];
      this.drawRotation();
    });
  }

  rotate(z) {
    const { yaw, pitch } = this.angles;
    const x1 = Math.cos(yaw) * z[0] - Math.sin(yaw) * z[1];
    const y1 = Math.sin(yaw) * z[0] + Math.cos(yaw) * z[1];
    // screen: x right, y up; depth along the view
    return [x1, Math.cos(pitch) * z[2] - Math.sin(pitch) * y1, Math.sin(pitch) * z[2] + Math.cos(pitch) * y1];
  }

  drawRotation() {
    if (this.info.latent_dim !== 3) return;
    const ctx = this.rot.getContext("2d");
    const [w, h] = this.rot.cssSize;
    ctx.clearRect(0, 0, w, h);
    const r = this.view.range;
    const span = Math.max(Math.abs(r.x[0]), Math.abs(r.x[1]), Math.abs(r.y[0]), Math.abs(r.y[1]), 3);
    const scale = (0.42 * w) / span;
    const screen = (z) => { const q = this.rotate(z); return [w / 2 + q[0] * scale, h / 2 - q[1] * scale, q[2]]; };
    // axes
    ctx.strokeStyle = "#888";
    ctx.fillStyle = "#444";
    ctx.font = "11px sans-serif";
    for (let k = 0; k < 3; k++) {
      const a = [0, 0, 0], b = [0, 0, 0];
      a[k] = -span; b[k] = span;
      const [x0, y0] = screen(a), [x1, y1] = screen(b);
      ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke();
      ctx.fillText("z" + k, x1 + 3, y1);
    }
    // points, far ones first
    const order = this.scatter.means.map((z, i) => [screen(z), i]).sort((p, q) => q[0][2] - p[0][2]);
    ctx.globalAlpha = 0.6;
    for (const [[x, y], i] of order) {
      ctx.fillStyle = COLORS[this.scatter.labels[i] % COLORS.length];
      ctx.fillRect(x - 1, y - 1, 2.2, 2.2);
    }
    ctx.globalAlpha = 1;
    // the plane the plot shows
    if (this.view.mode === "dims") {
      const p = this.view.plane;
      const corners = [[r.x[0], r.y[0]], [r.x[1], r.y[0]], [r.x[1], r.y[1]], [r.x[0], r.y[1]]].map(
        ([a, b]) => screen(p.origin.map((o, k) => o + a * p.e1[k] + b * p.e2[k])),
      );
      ctx.fillStyle = "rgba(0, 0, 0, 0.08)";
      ctx.strokeStyle = "#000";
      ctx.beginPath();
      corners.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      ctx.closePath();
      ctx.fill();
      ctx.stroke();
    }
    if (this.drawn) {
      const [x, y] = screen(this.drawn.mean);
      ctx.fillStyle = "#d00";
      ctx.beginPath(); ctx.arc(x, y, 5, 0, 2 * Math.PI); ctx.fill();
    }
  }

  // ---------------------------------------------------------------------------------------- drawn digit

  async encode(image) {
    if (!this.info.can_encode) return;
    const model = this.info.name;
    try {
      const out = await api(`models/${encodeURIComponent(model)}/encode`, { image_png: image, layout: "mnist" });
      if (model !== this.info.name) return;
      this.drawn = out;
      this.el(".drawn-recon").src = png(out.reconstruction);
      this.el(".drawn-text").textContent = "reconstruction; posterior mean (" + out.mean.slice(0, 4).map(fmt).join(", ") +
        (out.mean.length > 4 ? ", …" : "") + ")";
      this.root.dataset.drawnMean = JSON.stringify(out.mean);
      this.redraw();
      this.drawRotation();
    } catch (err) {
      this.status(err.message, true);
    }
  }

  clearDrawing() {
    this.drawn = null;
    delete this.root.dataset.drawnMean;
    this.el(".drawn-recon").removeAttribute("src");
    this.el(".drawn-text").textContent = "draw a digit";
    this.redraw();
    this.drawRotation();
  }
}

// ------------------------------------------------------------------------------------------------ the pad

function setupPad() {
  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, pad.width, pad.height); };
  clear();
  let last = null;
  const at = (e) => { const r = pad.getBoundingClientRect(); return [e.clientX - r.left, e.clientY - r.top]; };
  const stroke = (a, b) => {
    ctx.strokeStyle = "#fff";
    ctx.lineWidth = 15;
    ctx.lineCap = "round";
    ctx.beginPath(); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); ctx.stroke();
  };
  const send = () => {
    state.drawing = pad.toDataURL("image/png");
    for (const p of state.panels) if (p.info) p.encode(state.drawing);
  };
  pad.addEventListener("pointerdown", (e) => { last = at(e); stroke(last, last); pad.setPointerCapture(e.pointerId); });
  pad.addEventListener("pointermove", (e) => { if (!last) return; const p = at(e); stroke(last, p); last = p; });
  pad.addEventListener("pointerup", () => { if (last) { last = null; send(); } });
  document.getElementById("pad-clear").addEventListener("click", () => {
    clear();
    state.drawing = null;
    for (const p of state.panels) if (p.info) p.clearDrawing();
  });
  pad.addEventListener("dragover", (e) => { e.preventDefault(); pad.classList.add("dragover"); });
  pad.addEventListener("dragleave", () => pad.classList.remove("dragover"));
  pad.addEventListener("drop", (e) => {
    e.preventDefault();
    pad.classList.remove("dragover");
    const file = e.dataTransfer.files[0];
    if (!file) return;
    const img = new Image();
    img.onload = () => { clear(); ctx.drawImage(img, 0, 0, pad.width, pad.height); URL.revokeObjectURL(img.src); send(); };
    img.src = URL.createObjectURL(file);
  });
}

function legend(classNames) {
  const box = document.getElementById("legend");
  box.textContent = "";
  classNames.forEach((name, i) => {
    const span = document.createElement("span");
    const dotEl = document.createElement("i");
    dotEl.style.background = COLORS[i % COLORS.length];
    span.append(dotEl, name);
    box.appendChild(span);
  });
}

async function main() {
  setupPad();
  const status = document.getElementById("status");
  try {
    state.models = (await api("models")).models;
  } catch (err) {
    status.textContent = "cannot reach the API: " + err.message;
    status.classList.add("error");
    return;
  }
  const template = document.getElementById("panel-template");
  const count = Math.min(2, state.models.length);
  for (let i = 0; i < count; i++) {
    const root = template.content.firstElementChild.cloneNode(true);
    root.id = "panel-" + i;
    document.getElementById("panels").appendChild(root);
    const panel = new Panel(root, i);
    const select = root.querySelector(".model-select");
    for (const m of state.models) select.add(new Option(`${m.name} (${m.latent_dim}-D)`, m.name));
    state.panels.push(panel);
  }
  const first = state.models[0];
  legend(first.class_names.length ? first.class_names : []);
  await Promise.all(state.panels.map((p, i) => p.setModel(state.models[i].name)));
  status.textContent = `${state.models.length} model${state.models.length > 1 ? "s" : ""} served; ` +
    "the scatters show the same test images in every panel (hover one to ring it everywhere)";
  document.body.dataset.ready = "1";
}

main();

// The run page's charts, drawn with the vendored uPlot: voltage and current against test time (with
// detail fetched on zoom), per-cycle capacity and coulombic efficiency, and the impedance spectra.
"use strict";

const COLORS = {
  voltage: "#1f5fbf", current: "rgba(194,65,12,0.75)", forward: "#2f855a", reverse: "#7c3aed", ce: "#374151",
  cumulative: "#b7791f", fit: "#c2410c", grid: "rgba(0,0,0,0.09)", axis: "#333",
};
const TREND_COLORS = ["#1f5fbf", "#c2410c", "#2f855a", "#7c3aed", "#b7791f", "#0e7490"];

/** Axis fonts and sizes follow the page's rem, so the large-text mode enlarges the charts too. */
function axisStyle(extra = {}) {
  const rem = remPx();
  return {
    stroke: COLORS.axis,
    font: `${Math.round(0.8 * rem)}px system-ui, sans-serif`,
    labelFont: `${Math.round(0.85 * rem)}px system-ui, sans-serif`,
    labelSize: Math.round(1.4 * rem),
    labelGap: 0,
    size: Math.round(3.4 * rem),
    gap: Math.round(0.3 * rem),
    grid: { stroke: COLORS.grid, width: 1 },
    ticks: { stroke: COLORS.grid, width: 1, size: Math.round(0.3 * rem) },
    ...extra,
  };
}

function plotHeight(rems) {
  return Math.round(Math.min(rems * remPx(), window.innerHeight * 0.6));
}

/** Chart widths come from their box; a plot rebuilt (resize, large text) keeps its data. */
function plotWidth(container) {
  return Math.max(240, Math.floor(container.clientWidth || container.parentElement.clientWidth || 600));
}

/**
 * Voltage and current against test time. The server answers at most ~2 points per pixel bucket (min
 * and max, so no spike is lost); zooming fetches the new range in detail, a double-click goes back to
 * the whole run, and live samples are appended only while the whole run is shown.
 */
class SeriesPlot {
  constructor(container, runId) {
    this.container = container;
    this.runId = runId;
    this.plot = null;
    this.whole = null; // {x, v, i, t1}: x in hours, v in V, i in mA (display units)
    this.shown = null;
    this.zoom = null; // [t0_h, t1_h] while zoomed in
    this.request = 0;
    this.fetchZoom = debounce((t0, t1) => this.zoom && this.load(t0, t1), 200);
    this.reloadWhole = debounce(() => !this.zoom && this.load(), 2000);
    this.status = el("p", { class: "plot-status" });
    const button = (label, title, act) =>
      el("button", { type: "button", class: "plot-pan", title, "aria-label": title, onclick: act }, label);
    this.nav = el("div", { class: "plot-nav" },
      button("◀", "Earlier: pan back by half the range shown", () => this.pan(-0.5)),
      button("▶", "Later: pan on by half the range shown", () => this.pan(0.5)),
      button("Whole run", "Show the whole run (or double-click the plot)", () => this.showWhole()));
    container.after(this.nav, this.status);
    container.tabIndex = 0; // the arrow keys pan a zoomed plot that has the focus
    container.addEventListener("keydown", (e) => {
      if (e.key === "ArrowLeft" || e.key === "ArrowRight") {
        e.preventDefault();
        this.pan(e.key === "ArrowLeft" ? -0.5 : 0.5);
      }
    });
  }

  /** Move a zoomed view along the run by `fraction` of its width, then fetch that range's detail. */
  pan(fraction) {
    if (!this.zoom || !this.whole) return;
    const [a, b] = this.zoom;
    const width = b - a;
    const whole = wholeRange(this.whole);
    if (!whole) return;
    const [start, end] = whole;
    const t0 = Math.min(Math.max(a + fraction * width, start), Math.max(start, end - width));
    const range = [t0, t0 + width];
    this.zoom = range;
    this.request++;
    this.setX(range);
    this.fetchZoom(range[0], range[1]);
  }

  /** One bucket per pixel of the plotting area (the server sends each bucket's min and max). */
  points() {
    const area = this.plot && !this.container.hidden ? this.plot.over.clientWidth : 0;
    const estimate = plotWidth(this.container) - 2 * Math.round(3.4 * remPx());
    return Math.max(50, Math.min(4000, Math.round(area || estimate)));
  }

  async load(t0h = null, t1h = null) {
    const id = ++this.request;
    const params = new URLSearchParams({ points: String(this.points()) });
    if (t0h !== null) params.set("t0", String(Math.max(0, t0h * 3600)));
    if (t1h !== null) params.set("t1", String(t1h * 3600));
    let body;
    try {
      body = await getJSON(`/api/runs/${this.runId}/series?${params}`);
    } catch (err) {
      this.status.textContent = `Could not read the samples: ${err.message}`;
      return;
    }
    if (id !== this.request) return; // a newer zoom or reset was asked for meanwhile
    const data = toDisplay(body, t0h, t1h, this.points());
    if (t0h === null) {
      this.whole = data;
      if (!this.zoom) this.show(data, wholeRange(data, body));
    } else if (this.zoom) {
      this.show(data, this.zoom);
    }
  }

  show(data, range) {
    this.shown = data;
    this.container.hidden = data.count === 0 && !this.zoom;
    this.status.textContent = seriesNote(data, this.zoom !== null);
    if (!this.plot) this.build();
    this.plot.setData([data.x, data.v, data.i], false);
    this.setX(range);
    document.body.dataset.plotPoints = String(data.count);
  }

  setX(range) {
    if (!range || !(range[1] > range[0])) return;
    this.plot.setScale("x", { min: range[0], max: range[1] });
  }

  showWhole() {
    this.zoom = null;
    this.request++;
    if (this.whole) this.show(this.whole, wholeRange(this.whole));
    this.load();
  }

  /** A drag on the plot: zoom to it now with the data at hand, then fetch the detail for that range. */
  onSelect(u) {
    const { left, width } = u.select;
    u.setSelect({ left: 0, top: 0, width: 0, height: 0 }, false);
    if (width < 3) return;
    const range = [u.posToVal(left, "x"), u.posToVal(left + width, "x")];
    this.zoom = range;
    this.request++; // a whole-run answer still on its way must not replace the zoom
    this.setX(range);
    this.fetchZoom(range[0], range[1]);
  }

  /** Live samples of this run: kept in the whole-run data, drawn only while the whole run is shown. */
  append(t, voltage, current) {
    const w = this.whole;
    if (!w) return;
    const last = w.x.length ? w.x[w.x.length - 1] : -Infinity;
    for (let k = 0; k < t.length; k++) {
      const x = t[k] / 3600;
      if (!(x > last)) continue;
      w.x.push(x);
      w.v.push(isNum(voltage[k]) ? voltage[k] : null);
      w.i.push(isNum(current[k]) ? current[k] * 1000 : null);
      w.count++;
      w.samples++;
    }
    if (w.count > 4 * this.points()) this.reloadWhole(); // re-thin rather than grow without bound
    if (!this.zoom) inFrame("series-live", () => !this.zoom && this.show(w, wholeRange(w)));
  }

  build() {
    const axes = [
      axisStyle({ label: "Test time (h)", size: Math.round(2.2 * remPx()) }),
      axisStyle({ scale: "V", label: "Voltage (V)", values: (u, ticks) => ticks.map((v) => fmtTick(v)) }),
      axisStyle({ scale: "mA", label: "Current (mA)", side: 1, grid: { show: false },
        values: (u, ticks) => ticks.map((v) => fmtTick(v)) }),
    ];
    const opts = {
      width: plotWidth(this.container),
      height: plotHeight(24),
      scales: { x: { time: false, auto: false, range: (u, lo, hi) => [lo, hi] }, V: {}, mA: {} },
      series: [
        { label: "Test time", value: (u, x) => (isNum(x) ? fmtDuration(x * 3600) : DASH) },
        { label: "Voltage", scale: "V", stroke: COLORS.voltage, width: 1.25, value: (u, v) => fmtVoltage(v) },
        { label: "Current", scale: "mA", stroke: COLORS.current, width: 1.25,
          value: (u, i) => (isNum(i) ? fmtCurrent(i / 1000) : DASH) },
      ],
      axes,
      cursor: {
        drag: { x: true, y: false, setScale: false },
        bind: { dblclick: () => (event) => { if (event.button === 0) this.showWhole(); return null; } },
      },
      hooks: { setSelect: [(u) => this.onSelect(u)] },
    };
    const data = this.shown || { x: [], v: [], i: [] };
    this.plot = new uPlot(opts, [data.x, data.v, data.i], this.container);
  }

  rebuild() {
    if (!this.plot) return;
    const range = [this.plot.scales.x.min, this.plot.scales.x.max];
    this.plot.destroy();
    this.plot = null;
    this.build();
    this.setX(range);
  }
}

/** Server JSON to plot columns: hours, V and mA, with a null row where no data were recorded for long
 * (over an hour or five pixel buckets), so that an outage shows as a gap instead of a straight line. */
function toDisplay(body, t0h, t1h, points) {
  const t = body.t || [];
  const v = body.voltage || [];
  const a = body.current || [];
  const range = body.t_range || [t[0], t[t.length - 1]];
  const lo = t0h !== null ? t0h * 3600 : range[0];
  const hi = t1h !== null ? t1h * 3600 : range[1];
  const gap = Math.max(3600, (5 * (hi - lo)) / points);
  const out = { x: [], v: [], i: [], count: t.length, t_range: body.t_range, decimated: !!body.decimated,
    samples: isNum(body.samples_in_range) ? body.samples_in_range : t.length };
  for (let k = 0; k < t.length; k++) {
    if (k > 0 && t[k] - t[k - 1] > gap) {
      out.x.push((t[k - 1] + t[k]) / 7200);
      out.v.push(null);
      out.i.push(null);
    }
    out.x.push(t[k] / 3600);
    out.v.push(isNum(v[k]) ? v[k] : null);
    out.i.push(isNum(a[k]) ? a[k] * 1000 : null);
  }
  return out;
}

function seriesNote(data, zoomed) {
  if (!data.count) return zoomed ? "No samples in this range." : "No samples recorded yet.";
  const how = data.decimated ? "drawn as each pixel's minimum and maximum" : "all drawn";
  return `${data.samples.toLocaleString("en")} samples in this range, ${how}. ` +
    (zoomed ? "◀ ▶ or the arrow keys pan; double-click for the whole run."
      : "Drag across the plot to zoom in; double-click for the whole run.");
}

function wholeRange(data, body) {
  const r = (body && body.t_range) || data.t_range;
  const lo = r && isNum(r[0]) ? r[0] / 3600 : data.x[0];
  let hi = r && isNum(r[1]) ? r[1] / 3600 : data.x[data.x.length - 1];
  if (data.x.length && data.x[data.x.length - 1] > hi) hi = data.x[data.x.length - 1];
  if (!(hi > lo)) return isNum(lo) ? [lo - 0.01, lo + 0.01] : null;
  return [lo, hi];
}

function fmtTick(v) {
  if (v === 0) return "0";
  const abs = Math.abs(v);
  return abs >= 1000 || abs < 0.001 ? v.toExponential(1) : String(+v.toPrecision(6));
}

const capitalise = (s) => (s ? s[0].toUpperCase() + s.slice(1) : s);

/** Forward and reverse capacity (mAh, left) and coulombic efficiency (%, right) per cycle. */
function cyclesPlot(container, cycles) {
  const fwd = capitalise(cycles.forward_label || "forward");
  const rev = capitalise(cycles.reverse_label || "reverse");
  const nums = (xs) => (xs || []).map((v) => (isNum(v) ? v : null));
  const marker = (color) => ({ show: true, size: Math.round(0.4 * remPx()), stroke: color, fill: color });
  const opts = {
    width: plotWidth(container),
    height: plotHeight(18),
    scales: { x: { time: false }, mAh: {}, pct: {} },
    series: [
      { label: "Cycle", value: (u, c) => (isNum(c) ? String(c) : DASH) },
      { label: `${fwd}`, scale: "mAh", stroke: COLORS.forward, width: 1.5, points: marker(COLORS.forward),
        value: (u, q) => fmtMAh(q) },
      { label: `${rev}`, scale: "mAh", stroke: COLORS.reverse, width: 1.5, points: marker(COLORS.reverse),
        value: (u, q) => fmtMAh(q) },
      { label: "CE", scale: "pct", stroke: COLORS.ce, width: 1.5, points: marker(COLORS.ce),
        value: (u, p) => fmtPercent(p) },
      { label: "Cumulative CE", scale: "pct", stroke: COLORS.cumulative, width: 1.5, dash: [6, 4],
        value: (u, p) => fmtPercent(p) },
    ],
    axes: [
      axisStyle({ label: "Cycle", size: Math.round(2.2 * remPx()), incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000],
        values: (u, ticks) => ticks.map((c) => String(Math.round(c))) }),
      axisStyle({ scale: "mAh", label: "Capacity (mAh)", values: (u, ticks) => ticks.map(fmtTick) }),
      axisStyle({ scale: "pct", label: "Coulombic efficiency (%)", side: 1, grid: { show: false },
        values: (u, ticks) => ticks.map(fmtTick) }),
    ],
    cursor: { drag: { x: true, y: false } },
  };
  const data = [cycles.cycle || [], nums(cycles.forward_mAh), nums(cycles.reverse_mAh),
    nums(cycles.ce_percent), nums(cycles.cumulative_ce_percent)];
  return new uPlot(opts, data, container);
}

/**
 * Nyquist plot of one spectrum: x = Z′, y = −Z″, both in Ω with (nearly) the same Ω per pixel on
 * both axes, so a semicircle looks like one. Drawn in uPlot's x-y mode: impedance data are not
 * sorted by Z′ and the fit is a curve through them.
 */
function nyquistPlot(container, spectrum) {
  const zr = spectrum.z_real_ohm || [];
  const zi = (spectrum.z_imag_ohm || []).map((v) => -v);
  const fit = spectrum.fit;
  const fr = fit ? fit.z_real_ohm || [] : [];
  const fi = fit ? (fit.z_imag_ohm || []).map((v) => -v) : [];
  const all = { x: [...zr, ...fr].filter(isNum), y: [...zi, ...fi].filter(isNum) };
  const width = plotWidth(container);
  const height = plotHeight(18);
  const rem = remPx();
  const yAxis = Math.round(3.4 * rem);
  const xAxis = Math.round(2.2 * rem + 1.4 * rem);
  const ranges = equalRanges(all, width - yAxis - 2 * rem, height - xAxis - rem);
  const opts = {
    mode: 2,
    width,
    height,
    scales: {
      x: { time: false, auto: false, range: () => ranges.x },
      y: { auto: false, range: () => ranges.y },
    },
    series: [
      {},
      { label: "Measured", stroke: COLORS.voltage, fill: COLORS.voltage, paths: dots(0.25 * rem),
        points: { show: false } },
      { label: fit && fit.circuit ? `Fit ${fit.circuit}` : "Fit", stroke: COLORS.fit, width: 2,
        points: { show: false } },
    ],
    axes: [
      axisStyle({ label: "Z′ (Ω)", size: Math.round(2.2 * rem), values: (u, t) => t.map(fmtTick) }),
      axisStyle({ label: "−Z″ (Ω)", values: (u, t) => t.map(fmtTick) }),
    ],
    legend: { live: false },
    cursor: { drag: { x: false, y: false }, points: { show: false } },
  };
  const data = [null, [zr, zi]];
  data.push(fit && fr.length ? [fr, fi] : [[], []]);
  return new uPlot(opts, data, container);
}

/** A path of small discs at the data points: uPlot's x-y mode draws lines, measured spectra are dots. */
function dots(radiusCss) {
  return (u, seriesIdx) => {
    const [xs, ys] = u.data[seriesIdx];
    const r = radiusCss * (window.devicePixelRatio || 1);
    const path = new Path2D();
    for (let k = 0; k < xs.length; k++) {
      if (!isNum(xs[k]) || !isNum(ys[k])) continue;
      const cx = u.valToPos(xs[k], "x", true);
      const cy = u.valToPos(ys[k], "y", true);
      path.moveTo(cx + r, cy);
      path.arc(cx, cy, r, 0, 2 * Math.PI);
    }
    return { stroke: path, fill: path, clip: null, band: null, gaps: null, flags: 0 };
  };
}

/** Ranges with the same Ω per pixel in x and y (the larger of the two), −Z″ starting at or below 0. */
function equalRanges(points, pxW, pxH) {
  if (!points.x.length) return { x: [0, 1], y: [0, 1] };
  const xmin = Math.min(...points.x);
  const xmax = Math.max(...points.x);
  const ymin = Math.min(0, ...points.y);
  const ymax = Math.max(...points.y);
  const perPx = (Math.max((xmax - xmin) / Math.max(pxW, 50), (ymax - ymin) / Math.max(pxH, 50)) || 1) * 1.08;
  const xmid = (xmin + xmax) / 2;
  const x = [xmid - (perPx * pxW) / 2, xmid + (perPx * pxW) / 2];
  const ylo = ymin - perPx * pxH * 0.03;
  return { x, y: [ylo, ylo + perPx * pxH] };
}

/** Fitted resistances against test time (h), one line per resistance. */
function trendPlot(container, trend) {
  const names = Object.keys(trend.resistances_ohm || {});
  const x = (trend.t_s || []).map((t) => t / 3600);
  const series = [{ label: "Test time", value: (u, h) => (isNum(h) ? fmtDuration(h * 3600) : DASH) }];
  const data = [x];
  names.forEach((name, k) => {
    const color = TREND_COLORS[k % TREND_COLORS.length];
    series.push({ label: name, scale: "ohm", stroke: color, width: 1.5, value: (u, r) => fmtOhm(r),
      points: { show: true, size: Math.round(0.4 * remPx()), stroke: color, fill: color } });
    data.push(trend.resistances_ohm[name].map((r) => (isNum(r) ? r : null)));
  });
  const opts = {
    width: plotWidth(container),
    height: plotHeight(14),
    scales: { x: { time: false }, ohm: {} },
    series,
    axes: [
      axisStyle({ label: "Test time (h)", size: Math.round(2.2 * remPx()) }),
      axisStyle({ scale: "ohm", label: "Resistance (Ω)", values: (u, t) => t.map(fmtTick) }),
    ],
    cursor: { drag: { x: true, y: false } },
  };
  return new uPlot(opts, data, container);
}

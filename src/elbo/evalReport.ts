/**
 * Pictures of an evaluation: a chart (IoU per class, mIoU per object-size bucket, mIoU against
 * the threshold) drawn as SVG and rasterised by sharp, and a grid of example images with the
 * ground truth and the prediction at the best threshold side by side.
 */
import sharp from 'sharp';
import { readImageRGB } from '../io/image.ts';
import { classNames, type DatasetConfig, type ImageEntry } from './dataset.ts';
import { loadImagePrediction, thresholdMask, type EvaluationResult } from './evaluate.ts';

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

function fmt(x: number | null | undefined, digits = 1): string {
  return x === null || x === undefined || !Number.isFinite(x) ? 'n/a' : x.toFixed(digits);
}

/**
 * The chart as an SVG document: IoU per class (classes with at least one ground-truth or
 * predicted instance), mIoU per object-size bucket with its size boundary, and mIoU against the
 * threshold with the chosen one marked.
 */
export function metricsChartSvg(result: EvaluationResult, title = 'segmentation evaluation'): string {
  const m = result.metrics;
  const classes = m.perClass.filter((c) => (c.metrics.count ?? 0) > 0);
  const W = 900;
  const pad = 16;
  const labelW = 150;
  const barW = W - 2 * pad - labelW - 70;
  const rowH = 18;
  const parts: string[] = [];
  let y = pad;
  const text = (x: number, yy: number, s: string, size = 12, anchor = 'start', weight = 'normal'): void => {
    parts.push(
      `<text x="${x}" y="${yy}" font-family="DejaVu Sans, Arial, sans-serif" font-size="${size}" text-anchor="${anchor}" font-weight="${weight}" fill="#222">${esc(s)}</text>`,
    );
  };
  const mIoU = m.overall.m_IoU[0];
  text(pad, y + 16, `${title}: mIoU ${fmt(mIoU, 2)} at threshold ${m.bestThreshold} (${result.images.length} images)`, 16, 'start', 'bold');
  y += 34;

  // IoU per class
  text(pad, y + 12, 'IoU per class (%)', 13, 'start', 'bold');
  y += 20;
  const bar = (label: string, value: number | undefined, color: string, note = ''): void => {
    text(pad + labelW - 6, y + rowH - 5, label, 12, 'end');
    parts.push(`<rect x="${pad + labelW}" y="${y + 2}" width="${barW}" height="${rowH - 4}" fill="#eee"/>`);
    if (value !== undefined && Number.isFinite(value)) {
      const w = Math.max(0, Math.min(1, value / 100)) * barW;
      parts.push(`<rect x="${pad + labelW}" y="${y + 2}" width="${w.toFixed(1)}" height="${rowH - 4}" fill="${color}"/>`);
    }
    text(pad + labelW + barW + 6, y + rowH - 5, `${fmt(value)}${note}`, 12);
    y += rowH;
  };
  for (const c of classes) bar(c.name, c.metrics.m_IoU[0], c.name === 'background' ? '#999' : '#3b7dd8', ` (n=${c.metrics.count})`);
  bar('mean', mIoU, '#d8703b');
  y += 14;

  // mIoU per object-size bucket
  const fg = m.foreground;
  text(pad, y + 12, `foreground mIoU (%) per object-size bucket (object area / image area), ${fg.count ?? 0} instances`, 13, 'start', 'bold');
  y += 20;
  let lo = 0;
  fg.m_IoU.forEach((v, i) => {
    const hi = fg.boundary?.[i] ?? null;
    bar(`${fmt(lo, 3)}-${fmt(hi, 3)}`, v, '#5aa469');
    if (hi !== null) lo = hi;
  });
  y += 14;

  // mIoU against threshold
  const curve = result.mIoUByThreshold.filter((p) => Number.isFinite(p.mIoU));
  if (curve.length > 1) {
    text(pad, y + 12, 'mIoU (%) against threshold', 13, 'start', 'bold');
    y += 20;
    const ch = 140;
    const x0 = pad + labelW;
    const t0 = curve[0]!.threshold;
    const t1 = curve[curve.length - 1]!.threshold;
    const vmax = Math.max(...curve.map((p) => p.mIoU), 1);
    const px = (t: number): number => x0 + ((t - t0) / (t1 - t0 || 1)) * barW;
    const py = (v: number): number => y + ch - (v / vmax) * ch;
    parts.push(`<rect x="${x0}" y="${y}" width="${barW}" height="${ch}" fill="#f6f6f6" stroke="#ccc"/>`);
    parts.push(
      `<polyline fill="none" stroke="#3b7dd8" stroke-width="2" points="${curve.map((p) => `${px(p.threshold).toFixed(1)},${py(p.mIoU).toFixed(1)}`).join(' ')}"/>`,
    );
    const best = result.thresholdSearch;
    parts.push(`<line x1="${px(best.bestThreshold)}" y1="${y}" x2="${px(best.bestThreshold)}" y2="${y + ch}" stroke="#d8703b" stroke-dasharray="4,3"/>`);
    text(x0 - 6, y + 10, fmt(vmax), 11, 'end');
    text(x0 - 6, y + ch, '0', 11, 'end');
    text(x0, y + ch + 14, String(t0), 11, 'start');
    text(x0 + barW, y + ch + 14, String(t1), 11, 'end');
    text(px(best.bestThreshold), y + ch + 14, `best ${best.bestThreshold}`, 11, 'middle');
    y += ch + 22;
  }
  const H = y + pad;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}"><rect width="${W}" height="${H}" fill="white"/>${parts.join('')}</svg>`;
}

/** The chart as PNG bytes ({@link metricsChartSvg} rasterised by sharp / librsvg). */
export async function renderMetricsChart(result: EvaluationResult, title?: string): Promise<Buffer> {
  return sharp(Buffer.from(metricsChartSvg(result, title))).png().toBuffer();
}

/**
 * Colour of class index `c` in the PASCAL VOC colormap (bit-interleaved), which VOC's palette
 * label maps use; 255 (ignore) is VOC's cream border colour.
 */
export function vocColor(c: number): [number, number, number] {
  if (c === 255) return [224, 224, 192];
  let r = 0;
  let g = 0;
  let b = 0;
  let x = c;
  for (let j = 0; j < 8; j++) {
    r |= ((x >> 0) & 1) << (7 - j);
    g |= ((x >> 1) & 1) << (7 - j);
    b |= ((x >> 2) & 1) << (7 - j);
    x >>= 3;
  }
  return [r, g, b];
}

/** Label map -> RGB with {@link vocColor}. `labels`: (h, w) class indices. Returns (h, w, 3). */
export function colorize(labels: ArrayLike<number>): Uint8Array {
  const out = new Uint8Array(labels.length * 3);
  const lut = new Map<number, [number, number, number]>();
  for (let i = 0; i < labels.length; i++) {
    const c = labels[i]!;
    let col = lut.get(c);
    if (col === undefined) lut.set(c, (col = vocColor(c)));
    out[i * 3] = col[0];
    out[i * 3 + 1] = col[1];
    out[i * 3 + 2] = col[2];
  }
  return out;
}

/** Options of {@link renderExampleGrid}. */
export interface ExampleGridOptions {
  /** Number of example rows (default 4); images are picked evenly over the evaluated ones. */
  count?: number;
  /** Height of each tile in pixels (default 160). */
  tileHeight?: number;
  /** Receives warnings (e.g. an image file that cannot be read). */
  warn?: (msg: string) => void;
}

async function tile(rgb: Uint8Array, w: number, h: number, tw: number, th: number, nearest: boolean): Promise<Buffer> {
  return sharp(rgb, { raw: { width: w, height: h, channels: 3 } })
    .resize(tw, th, { fit: 'fill', kernel: nearest ? 'nearest' : 'lanczos3' })
    .png()
    .toBuffer();
}

/**
 * A PNG grid: one row per example image with the image, the ground truth and the prediction at
 * the best threshold (VOC colours, classes named under each row). A missing or unreadable
 * image becomes a grey tile with a warning.
 */
export async function renderExampleGrid(cfg: DatasetConfig, result: EvaluationResult, opts: ExampleGridOptions = {}): Promise<Buffer> {
  const count = Math.min(opts.count ?? 4, result.images.length);
  const th = opts.tileHeight ?? 160;
  const names = classNames(cfg);
  const picks: ImageEntry[] = [];
  for (let i = 0; i < count; i++) {
    const e = result.images[Math.floor((i * result.images.length) / count)]!;
    if (!picks.includes(e)) picks.push(e);
  }
  const pad = 8;
  const header = 24;
  const caption = 18;
  const rows: Array<{ tiles: Buffer[]; tw: number; label: string }> = [];
  for (const entry of picks) {
    const pred = await loadImagePrediction(cfg, entry, result.heatmaps.get(entry.index) ?? []);
    const { width: w, height: h } = pred.gt;
    const tw = Math.max(1, Math.round((w / h) * th));
    let imgTile: Buffer;
    try {
      const img = await readImageRGB(entry.imgPath);
      imgTile = await tile(img.data, img.width, img.height, tw, th, false);
    } catch (err) {
      opts.warn?.(`example grid: ${(err as Error).message}; shown as a grey tile`);
      imgTile = await sharp({ create: { width: tw, height: th, channels: 3, background: { r: 128, g: 128, b: 128 } } })
        .png()
        .toBuffer();
    }
    const mask = thresholdMask(pred, result.thresholdSearch.bestThresholdPercent, cfg.dataset);
    const gtTile = await tile(colorize(pred.gt.data), w, h, tw, th, true);
    const predTile = await tile(colorize(mask), w, h, tw, th, true);
    const classList = (labels: ArrayLike<number>): string => {
      const seen = new Set<number>();
      for (let i = 0; i < labels.length; i++) seen.add(labels[i]!);
      return [...seen]
        .filter((c) => c !== 0 && c !== 255)
        .sort((a, b) => a - b)
        .map((c) => names[c] ?? String(c))
        .join(', ');
    };
    const label = `${entry.index}: ${entry.name}   gt [${classList(pred.gt.data)}]   predicted [${classList(mask)}]`;
    rows.push({ tiles: [imgTile, gtTile, predTile], tw, label });
  }
  const maxTw = Math.max(1, ...rows.map((r) => r.tw));
  const W = pad + 3 * (maxTw + pad);
  const H = header + rows.length * (th + caption + pad) + pad;
  const composites: sharp.OverlayOptions[] = [];
  const svgText: string[] = [];
  const t = (x: number, y: number, s: string, size: number): void => {
    svgText.push(`<text x="${x}" y="${y}" font-family="DejaVu Sans, Arial, sans-serif" font-size="${size}" fill="#222">${esc(s)}</text>`);
  };
  ['image', 'ground truth', `prediction (threshold ${result.metrics.bestThreshold})`].forEach((s, i) => t(pad + i * (maxTw + pad), 17, s, 13));
  rows.forEach((r, k) => {
    const y = header + k * (th + caption + pad);
    r.tiles.forEach((buf, i) => composites.push({ input: buf, left: pad + i * (maxTw + pad), top: y }));
    t(pad, y + th + 14, r.label, 12);
  });
  composites.push({ input: Buffer.from(`<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}">${svgText.join('')}</svg>`), left: 0, top: 0 });
  return sharp({ create: { width: W, height: H, channels: 3, background: { r: 255, g: 255, b: 255 } } })
    .composite(composites)
    .png()
    .toBuffer();
}

// Pieces shared by the commands: the bundled pipeline, progress lines with ETA, Ctrl-C
// handling that lets the current file finish, and output-directory checks.
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The small random-weight pipeline shipped in weights/ (demo and tests). */
export const BUNDLED_PIPELINE = fileURLToPath(new URL('../../weights/sd15-tiny', import.meta.url));

export const BUNDLED_WARNING =
  'note: no --model given, using the bundled tiny pipeline (weights/sd15-tiny). Its weights are random, so the ' +
  'heatmaps are meaningless: they only show that the whole method runs. For real results pass a Stable Diffusion ' +
  '1.x/2.x checkpoint: --model /path/to/diffusers-folder or --model stable-diffusion-v1-5/stable-diffusion-v1-5 ' +
  '(found in the local Hugging Face cache; download it once with `huggingface-cli download stable-diffusion-v1-5/stable-diffusion-v1-5`).';

/** Thrown from progress callbacks after Ctrl-C, between two units of work. */
export class Interrupted extends Error {
  constructor() {
    super('interrupted');
  }
}

let interrupted = false;
let handlerInstalled = false;

/** First Ctrl-C: stop after the file being written; second: exit at once. */
export function installInterruptHandler(): void {
  if (handlerInstalled) return;
  handlerInstalled = true;
  process.on('SIGINT', () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    process.stderr.write('\ninterrupted: finishing the current file, then stopping (Ctrl-C again to quit now)\n');
  });
}

export function checkInterrupted(): void {
  if (interrupted) throw new Interrupted();
}

/** Creates `dir` (and parents) and checks that a file can be written there. */
export function ensureWritableDir(dir: string, what = '--out'): void {
  try {
    mkdirSync(dir, { recursive: true });
    const probe = join(dir, `.write-test-${process.pid}`);
    writeFileSync(probe, '');
    rmSync(probe);
  } catch (e) {
    throw new Error(`${what} ${dir}: cannot write there (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
}

function fmtTime(s: number): string {
  if (!Number.isFinite(s)) return '?';
  if (s < 60) return `${s.toFixed(0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.round(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** A one-line progress display on stderr (a line per update when not a TTY). */
export class Progress {
  private t0 = performance.now();
  private lastLen = 0;
  private lastPrint = 0;
  constructor(private readonly quiet = false) {}

  /** fraction: overall progress in [0, 1], used for the ETA. */
  update(text: string, fraction: number): void {
    if (this.quiet) return;
    const now = performance.now();
    const elapsed = (now - this.t0) / 1000;
    const eta = fraction > 0 ? (elapsed * (1 - fraction)) / fraction : NaN;
    const width = 24;
    const filled = Math.round(Math.min(1, Math.max(0, fraction)) * width);
    const bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${(fraction * 100).toFixed(0).padStart(3)}%`;
    const line = `${bar} ${text} | ${fmtTime(elapsed)} elapsed, ETA ${fmtTime(eta)}`;
    if (process.stderr.isTTY) {
      process.stderr.write(`\r${line}${' '.repeat(Math.max(0, this.lastLen - line.length))}`);
      this.lastLen = line.length;
    } else if (now - this.lastPrint > 2000 || fraction >= 1) {
      process.stderr.write(`${line}\n`);
      this.lastPrint = now;
    }
  }

  done(): void {
    if (!this.quiet && process.stderr.isTTY && this.lastLen) process.stderr.write('\n');
    this.lastLen = 0;
  }
}

/** Splits a comma-separated class list, trimming spaces; empty entries are dropped. */
export function splitClasses(s: string): string[] {
  return s
    .split(',')
    .map((c) => c.trim())
    .filter((c) => c.length > 0);
}

/** A class name made safe for a file name (path separators replaced). */
export function fileSafe(name: string): string {
  return name.replace(/[/\\\0]/g, '_');
}

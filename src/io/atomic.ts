/**
 * Atomic file writes: write to a temporary file in the same folder, fsync, rename over the
 * target. A reader never sees a half-written file, and an interrupted run leaves either the
 * old file or the new one (plus, at worst, a stray `*.tmp-<pid>-<rand>` file).
 */
import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import * as path from 'node:path';

function tempPathFor(target: string): string {
  const rand = Math.random().toString(36).slice(2, 10);
  return `${target}.tmp-${process.pid}-${rand}`;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Writes `data` (bytes, or a string written as UTF-8) to `target` atomically, creating the
 * parent folders as needed.
 */
export async function writeFileAtomic(target: string, data: Uint8Array | string): Promise<void> {
  const dir = path.dirname(target);
  await fsp.mkdir(dir, { recursive: true });
  const tmp = tempPathFor(target);
  let handle: fsp.FileHandle | undefined;
  try {
    handle = await fsp.open(tmp, 'w');
    await handle.writeFile(data);
    await handle.sync();
    await handle.close();
    handle = undefined;
    await fsp.rename(tmp, target);
  } catch (err) {
    if (handle !== undefined) await handle.close().catch(() => undefined);
    await fsp.rm(tmp, { force: true }).catch(() => undefined);
    throw new Error(`${target}: atomic write failed: ${describe(err)}`, { cause: err });
  }
}

/** Synchronous variant of {@link writeFileAtomic}. */
export function writeFileAtomicSync(target: string, data: Uint8Array | string): void {
  const dir = path.dirname(target);
  fs.mkdirSync(dir, { recursive: true });
  const tmp = tempPathFor(target);
  let fd: number | undefined;
  try {
    fd = fs.openSync(tmp, 'w');
    fs.writeFileSync(fd, data);
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    fd = undefined;
    fs.renameSync(tmp, target);
  } catch (err) {
    if (fd !== undefined) {
      try {
        fs.closeSync(fd);
      } catch {
        // already failing; the original error is the one worth reporting
      }
    }
    fs.rmSync(tmp, { force: true });
    throw new Error(`${target}: atomic write failed: ${describe(err)}`, { cause: err });
  }
}

import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { Tensor, bindCache, dawnFlags, lavapipeCacheEnv, maxBatchFrom, poolCapFrom, scope, keep, uniforms } from '../src/tensor/index.js';
import { getDevice, randn } from './helpers/gpu.js';
import { matmul } from '../src/kernels/matmul.js';

const SCALE_WGSL = `
struct P { n: u32, a: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) {
  if (g.x < p.n) { y[g.x] = x[g.x] * p.a; }
}`;

describe('device', () => {
  it('batches many dispatches before one readback and keeps order', async () => {
    const dev = await getDevice();
    const pipe = dev.pipeline('test-scale', SCALE_WGSL);
    const n = 257;
    const data = randn(n, 1);
    const submitsBefore = dev.submitCount;
    let x = Tensor.fromArray(dev, data, [n]);
    for (let i = 0; i < 100; i++) {
      const y = Tensor.empty(dev, [n]);
      dev.dispatch({ label: `scale (${n})`, pipeline: pipe, uniforms: uniforms([['u', n], ['f', 1.01]]), bindings: [x.binding(), y.binding()], workgroups: [Math.ceil(n / 64)] });
      x.release();
      x = y;
    }
    const out = await x.toArray();
    // 100 dispatches, one upload and one read: a submit per maxBatch dispatches (16 on a CPU
    // adapter, 128 on a GPU) and one for the read, far fewer than the dispatches.
    expect(dev.maxBatch).toBe(dev.hostMemory ? 16 : 128);
    expect(dev.submitCount - submitsBefore).toBeLessThanOrEqual(Math.ceil(100 / dev.maxBatch) + 2);
    for (let i = 0; i < n; i++) expect(out[i]).toBeCloseTo(data[i]! * 1.01 ** 100, 4);
    x.release();
  });

  it('scope releases every intermediate except the result', async () => {
    const dev = await getDevice();
    const live0 = dev.liveBytes;
    const kept = scope(() => {
      const a = Tensor.zeros(dev, [7, 77]);
      const b = a.reshape([77, 7]);
      Tensor.zeros(dev, [4096]);
      return { b, list: [Tensor.zeros(dev, [1])] };
    });
    expect(kept.b.shape).toEqual([77, 7]);
    expect(dev.liveBytes).toBeGreaterThan(live0);
    kept.b.release();
    kept.list[0]!.release();
    expect(dev.liveBytes).toBe(live0);
    const w = scope(() => keep(Tensor.zeros(dev, [3])));
    expect(w.released).toBe(false);
    w.release();
    expect(dev.liveBytes).toBe(live0);
  });

  it('pools textures, counts them in liveBytes and names the limit a texture exceeds', async () => {
    const dev = await getDevice();
    const live0 = dev.liveBytes;
    const t = dev.allocTexture(5, 7, 2);
    expect(dev.liveBytes - live0).toBe(5 * 7 * 2 * 16);
    dev.freeTexture(t);
    expect(dev.liveBytes).toBe(live0);
    expect(dev.allocTexture(5, 7, 2)).toBe(t); // the pooled one, same size
    dev.freeTexture(t);
    const max = dev.limits.maxTextureDimension2D;
    expect(() => dev.allocTexture(max + 1, 1, 1, 'big a')).toThrow(new RegExp(`big a: a ${max + 1}x1x1 texture exceeds the adapter's maxTextureDimension2D ${max}`));
    // A cpu matmul (a read from a texture) leaves no texture behind.
    const a = Tensor.zeros(dev, [9, 64]);
    const b = Tensor.zeros(dev, [64, 12]);
    matmul(a, b, { variant: 'cpu' }).release(); // first use makes the kept dummy binding
    const before = dev.liveBytes;
    matmul(a, b, { variant: 'cpu' }).release();
    await dev.sync();
    expect(dev.liveBytes).toBe(before);
    a.release();
    b.release();
  });

  it('errors clearly on use after release, bad shapes and oversize buffers', async () => {
    const dev = await getDevice();
    const t = Tensor.zeros(dev, [5]);
    t.release();
    await expect(t.toArray()).rejects.toThrow(/used after release/);
    expect(() => Tensor.zeros(dev, [2, 3]).reshape([4, 2])).toThrow(/cannot view \(2x3\) as \(4x2\)/);
    // One element more than the adapter's maxBufferSize allows (4 GiB on lavapipe, 1 TiB on an H100).
    expect(() => Tensor.empty(dev, [Math.floor(dev.limits.maxBufferSize / 4) + 1])).toThrow(/maxBufferSize/);
  });

  it('logs each pipeline compile, and precompiled pipelines are used without compiling again', async () => {
    const dev = await getDevice();
    const code = (k: number): string => `@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(1) fn main() { x[0] = x[0] * ${k}.0 + 1.0; }`;
    const n0 = dev.compileLog.length;
    const key = `test compile log ${Math.random()}`;
    dev.pipeline(key, () => code(3));
    dev.pipeline(key, () => code(3)); // cached: no second entry
    expect(dev.compileLog.length).toBe(n0 + 1);
    const e = dev.compileLog[n0]!;
    expect(e.key).toBe(key);
    expect(e.code).toBe(code(3));
    expect(e.moduleMs + e.pipelineMs).toBeGreaterThanOrEqual(0);
    const specs = [2, 5].map((k) => ({ key: `${key} x${k}`, entryPoint: 'main', code: code(k) }));
    expect((await dev.precompile(specs)).compiled).toBe(2);
    expect((await dev.precompile(specs)).compiled).toBe(0);
    // The precompiled pipeline runs, and asking for it compiles nothing.
    const p5 = dev.pipeline(specs[1]!.key, () => {
      throw new Error('should not compile again');
    });
    expect(dev.compileLog.length).toBe(n0 + 1);
    const x = Tensor.fromArray(dev, new Float32Array([2]), [1]);
    dev.dispatch({ label: 'precompiled', pipeline: p5, bindings: [x.binding()], workgroups: [1, 1, 1] });
    expect(Array.from(await x.toArray())).toEqual([11]);
    x.release();
    await expect(dev.precompile([{ key: `${key} bad`, entryPoint: 'main', code: 'fn main( {' }])).rejects.toThrow(/precompile: pipeline "test compile log .* bad"/);
  });

  it('a repeated computation gets the same pooled buffers, whatever order they were released in', async () => {
    const dev = await getDevice();
    // Same sizes, nested scopes, one tensor handed out of the inner scope.
    const run = (): GPUBuffer[] =>
      scope(() => {
        const outer = [Tensor.empty(dev, [1000], 'f32'), Tensor.empty(dev, [1000], 'f32')];
        const inner = scope(() => {
          const a = Tensor.empty(dev, [1000], 'f32');
          Tensor.empty(dev, [1000], 'f32');
          return a;
        });
        const last = Tensor.empty(dev, [1000], 'f32');
        return [...outer, inner, last].map((t) => (t.binding() as { buffer: GPUBuffer }).buffer);
      });
    const first = run();
    const second = run();
    expect(new Set(first).size).toBe(4);
    expect(second.every((b, i) => b === first[i])).toBe(true);
    // Explicit releases in another order than made: the pool hands out by age, not by
    // release order, so the next round still gets the same buffers in the same roles.
    const round = (order: number[]): GPUBuffer[] => {
      const ts = [0, 1, 2].map(() => Tensor.empty(dev, [3000], 'f32'));
      const bufs = ts.map((t) => (t.binding() as { buffer: GPUBuffer }).buffer);
      for (const i of order) ts[i]!.release();
      return bufs;
    };
    const r1 = round([1, 0, 2]);
    const r2 = round([2, 1, 0]);
    const r3 = round([0, 2, 1]);
    expect(r2.every((b, i) => b === r1[i])).toBe(true);
    expect(r3.every((b, i) => b === r1[i])).toBe(true);
  });

  it('a full pool evicts the least recently released buffers, after the work naming them is submitted', async () => {
    const dev = await getDevice();
    const pipe = dev.pipeline('test-scale', SCALE_WGSL);
    const saved = dev.poolCap;
    dev.trimPool();
    try {
      dev.poolCap = 3 * 4096;
      const stale = Tensor.fromArray(dev, Float32Array.from({ length: 2000 }, (_, i) => i), [2000]); // 8192-byte bucket
      const y = Tensor.empty(dev, [2000]);
      const scale = (x: Tensor, out: Tensor, n: number): void =>
        dev.dispatch({ label: 'scale', pipeline: pipe, uniforms: uniforms([['u', n], ['f', 2]]), bindings: [x.binding(), out.binding()], workgroups: [Math.ceil(n / 64)] });
      scale(stale, y, 2000);
      stale.release();
      const [a, b] = [Tensor.zeros(dev, [1000]), Tensor.zeros(dev, [1000])]; // 4096-byte buckets
      const aBuf = (a.binding() as { buffer: GPUBuffer }).buffer;
      const c = Tensor.empty(dev, [1000]);
      scale(a, c, 1000);
      const [h0, o0] = [dev.bindGroupHits, dev.poolEvictions];
      a.release();
      b.release(); // 16384 bytes pooled > 12288: the stale buffer goes, a and b stay
      expect(dev.poolEvictions - o0).toBe(1);
      expect(dev.poolBytes).toBe(2 * 4096);
      // The evicted buffer is destroyed after the submit, so the work that reads it runs.
      const got = await y.toArray();
      expect([got[0], got[1], got[1999]]).toEqual([0, 2, 3998]);
      // The working set keeps its buffers and their cached bind groups.
      const a2 = Tensor.zeros(dev, [1000]);
      expect((a2.binding() as { buffer: GPUBuffer }).buffer).toBe(aBuf);
      scale(a2, c, 1000);
      expect(dev.bindGroupHits - h0).toBe(1);
      expect(Array.from((await c.toArray()).subarray(0, 3))).toEqual([0, 0, 0]);
      for (const t of [y, a2, c]) t.release();
    } finally {
      dev.poolCap = saved;
    }
  });

  it('ELBO_POOL_MB sets the pool cap in MiB; anything but a number >= 0 is an error naming it', () => {
    expect(poolCapFrom('256', 7)).toBe(256 * 2 ** 20);
    expect(poolCapFrom('0.5', 7)).toBe(2 ** 19);
    expect(poolCapFrom(undefined, 7)).toBe(7);
    expect(poolCapFrom(' ', 7)).toBe(7);
    expect(() => poolCapFrom('lots', 7)).toThrow('ELBO_POOL_MB=lots: expected a number of MiB >= 0');
    expect(() => poolCapFrom('-1', 7)).toThrow('ELBO_POOL_MB=-1: expected a number of MiB >= 0');
  });

  it('ELBO_MAX_BATCH sets the dispatches per submit; anything but an integer >= 1 is an error naming it', () => {
    expect(maxBatchFrom('32', 7)).toBe(32);
    expect(maxBatchFrom(undefined, 7)).toBe(7);
    expect(() => maxBatchFrom('0', 7)).toThrow('ELBO_MAX_BATCH=0: expected an integer >= 1');
    expect(() => maxBatchFrom('2.5', 7)).toThrow('ELBO_MAX_BATCH=2.5: expected an integer >= 1');
  });

  it("Dawn's flags: robustness off unless asked for, lazy clears off on CPU adapters; ELBO_DAWN_FLAGS verbatim", () => {
    const lazy = 'disable-dawn-features=lazy_clear_resource_on_first_use';
    const robust = 'enable-dawn-features=disable_robustness';
    expect(dawnFlags({})).toEqual([robust]);
    expect(dawnFlags({}, true)).toEqual([robust, lazy]);
    expect(dawnFlags({ ELBO_ROBUST: '1' }, true)).toEqual([lazy]);
    expect(dawnFlags({ ELBO_LAZY_CLEAR: '1' }, true)).toEqual([robust]);
    expect(dawnFlags({ ELBO_ROBUST: '1', ELBO_LAZY_CLEAR: '1' }, true)).toEqual([]);
    expect(dawnFlags({ ELBO_DAWN_FLAGS: ' a=b  c ', ELBO_LAZY_CLEAR: '1' }, true)).toEqual(['a=b', 'c']);
  });

  it("a hand-set lavapipe vector width gets a shader cache of its own (Mesa's does not key on it)", () => {
    // A made-up home and cache root: the function only builds the path.
    const home = 'home-u';
    expect(lavapipeCacheEnv({}, home)).toEqual({});
    expect(lavapipeCacheEnv({ LP_NATIVE_VECTOR_WIDTH: '' }, home)).toEqual({});
    expect(lavapipeCacheEnv({ LP_NATIVE_VECTOR_WIDTH: '512' }, home)).toEqual({ MESA_SHADER_CACHE_DIR: path.join(home, '.cache', 'mesa_shader_cache_lp512') });
    expect(lavapipeCacheEnv({ LP_NATIVE_VECTOR_WIDTH: ' 256 ', XDG_CACHE_HOME: 'xdg' }, home)).toEqual({ MESA_SHADER_CACHE_DIR: path.join('xdg', 'mesa_shader_cache_lp256') });
    expect(lavapipeCacheEnv({ LP_NATIVE_VECTOR_WIDTH: '../x' }, home)).toEqual({ MESA_SHADER_CACHE_DIR: path.join(home, '.cache', 'mesa_shader_cache_lp___x') });
    // The user's own cache directory wins.
    expect(lavapipeCacheEnv({ LP_NATIVE_VECTOR_WIDTH: '512', MESA_SHADER_CACHE_DIR: 'mine' }, home)).toEqual({});
  });

  it('zeros clears a new buffer as well as a reused one (Dawn does not zero-fill them)', async () => {
    const dev = await getDevice();
    // A size no other test allocates: a buffer made now, not taken from the pool.
    const t = Tensor.zeros(dev, [3, 4099]);
    const v = await t.toArray();
    expect(v.length).toBe(3 * 4099);
    expect(v.every((x) => x === 0)).toBe(true);
    t.release();
  });

  it('zeros clears a reused buffer on the GPU, in order with the recorded work', async () => {
    const dev = await getDevice();
    const pipe = dev.pipeline('test-scale', SCALE_WGSL);
    const x = Tensor.fromArray(dev, new Float32Array(300).fill(3), [300]);
    const y = Tensor.empty(dev, [300]);
    dev.dispatch({ label: 'scale', pipeline: pipe, uniforms: uniforms([['u', 300], ['f', 2]]), bindings: [x.binding(), y.binding()], workgroups: [5] });
    const yBuf = (y.binding() as { buffer: GPUBuffer }).buffer;
    const before = Array.from((await y.toArray()).subarray(0, 2));
    y.release();
    const z = Tensor.zeros(dev, [300]);
    expect((z.binding() as { buffer: GPUBuffer }).buffer).toBe(yBuf); // the same, dirty buffer
    const submits = dev.submitCount;
    const got = await z.toArray();
    expect(dev.submitCount - submits).toBe(1); // the clear rode along with the readback
    expect(before).toEqual([6, 6]);
    expect(got.every((v) => v === 0)).toBe(true);
    for (const t of [x, z]) t.release();
  });

  it('reuses bind groups for repeated dispatches, with uniforms by content, through cache overflows', async () => {
    const dev = await getDevice();
    const pipe = dev.pipeline('test bind cache', `struct P { a: u32, b: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@compute @workgroup_size(1) fn main() { x[p.a] = x[p.a] * 2.0 + p.b; }`);
    const saved = { ...bindCache };
    try {
      for (const [enabled, maxGroups, maxUniformSlots] of [[true, 16384, 32768], [true, 3, 2], [false, 0, 0]] as const) {
        Object.assign(bindCache, { enabled, maxGroups, maxUniformSlots });
        const x = Tensor.zeros(dev, [4]);
        const want = new Float64Array(4);
        const [h0, m0] = [dev.bindGroupHits, dev.bindGroupMisses];
        // The same few (index, addend) uniforms over and over, interleaved.
        for (let i = 0; i < 24; i++) {
          const a = i % 3;
          const b = (i % 5) + 0.5;
          dev.dispatch({ label: 'bind cache', pipeline: pipe, uniforms: uniforms([['u', a], ['f', b]]), bindings: [x.binding()], workgroups: [1] });
          want[a] = want[a]! * 2 + b;
        }
        expect(Array.from(await x.toArray())).toEqual(Array.from(want));
        const [hits, misses] = [dev.bindGroupHits - h0, dev.bindGroupMisses - m0];
        if (!enabled) expect(hits + misses).toBe(0);
        // 15 distinct (a, b) pairs: with room for them all, each is made once.
        else if (maxGroups > 100) expect([hits, misses]).toEqual([9, 15]);
        else expect(hits + misses).toBe(24);
        x.release();
      }
    } finally {
      Object.assign(bindCache, saved);
    }
    // A pooled buffer destroyed by trimPool, then a new one: no stale group is used.
    const y = Tensor.zeros(dev, [4]);
    dev.dispatch({ label: 'bind cache', pipeline: pipe, uniforms: uniforms([['u', 1], ['f', 1]]), bindings: [y.binding()], workgroups: [1] });
    await dev.sync();
    y.release();
    dev.trimPool();
    const z = Tensor.zeros(dev, [4]);
    dev.dispatch({ label: 'bind cache', pipeline: pipe, uniforms: uniforms([['u', 1], ['f', 1]]), bindings: [z.binding()], workgroups: [1] });
    expect(Array.from(await z.toArray())).toEqual([0, 1, 0, 0]);
    // skipSubmit (bench -- record): recorded work is dropped, not run.
    dev.skipSubmit = true;
    try {
      dev.dispatch({ label: 'bind cache', pipeline: pipe, uniforms: uniforms([['u', 2], ['f', 5]]), bindings: [z.binding()], workgroups: [1] });
      dev.flush();
    } finally {
      dev.skipSubmit = false;
    }
    expect(Array.from(await z.toArray())).toEqual([0, 1, 0, 0]);
    z.release();
  });

  it('round-trips f16 storage', async () => {
    const dev = await getDevice();
    if (!dev.hasF16) return;
    const data = randn(77, 3);
    const t = Tensor.fromArray(dev, data, [7, 11], 'f16');
    const back = await t.toArray();
    for (let i = 0; i < 77; i++) expect(Math.abs(back[i]! - data[i]!)).toBeLessThan(1e-3);
    t.release();
  });
});

describe('device without shader-f16', () => {
  it('refuses f16 tensors with a message naming the feature', async () => {
    const { spawnSync } = await import('node:child_process');
    const script = [
      "import { Device, Tensor } from './src/tensor/index.ts';",
      'const dev = await Device.get();',
      "try { Tensor.empty(dev, [4], 'f16'); console.log('no error'); } catch (e) { console.log(e.message); }",
      'dev.destroy();',
    ].join('\n');
    const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      env: { ...process.env, ELBO_NO_F16: '1' },
      encoding: 'utf8',
      timeout: 120_000,
    });
    expect(r.stdout).toMatch(/f16 tensors need the adapter feature shader-f16/);
  });
});

// Pipeline compile time, for choosing how to pay it (`npm run bench -- compile ...`):
//   compile --record FILE [--what unet|segment]   run the model once, print where the first
//        run's compile time went (host seconds per pipeline), write every pipeline's source to FILE
//   compile --replay FILE [--sync] [--what ...]   compile FILE's pipelines first, all at once
//        with createComputePipelineAsync (or one by one with --sync), then run the model: its
//        first run then compiles nothing, and the printed seconds compare the two ways
// Use a fresh process for each step, and a cold driver cache where the driver has one
// (NVIDIA: __GL_SHADER_DISK_CACHE=0), so each step compiles for real.
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import type { Device, PipelineSpec } from '../src/tensor/index.js';
import { benchUnet, type ModelBenchOptions } from './models.js';

export async function benchCompile(dev: Device, o: ModelBenchOptions, args: { record?: string; replay?: string; sync: boolean; what: string }): Promise<void> {
  const runModel = async (): Promise<void> => {
    const t0 = performance.now();
    if (args.what === 'segment') {
      const { benchSegment } = await import('./segment.js');
      await benchSegment(dev, { ...o, runs: 1 });
    } else await benchUnet(dev, { ...o, runs: 1 });
    console.log(`${args.what} (first run and one timed run): ${((performance.now() - t0) / 1000).toFixed(2)} s`);
  };
  if (args.replay) {
    const specs = JSON.parse(readFileSync(args.replay, 'utf8')) as PipelineSpec[];
    const t0 = performance.now();
    if (args.sync) for (const s of specs) dev.pipeline(s.key, s.code, s.entryPoint, s.constants);
    else await dev.precompile(specs);
    await dev.sync();
    console.log(`${specs.length} pipelines compiled ${args.sync ? 'one by one (createComputePipeline)' : 'all at once (createComputePipelineAsync)'}: ${((performance.now() - t0) / 1000).toFixed(2)} s`);
    const before = dev.compileLog.length;
    await runModel();
    console.log(`compiled during the run: ${dev.compileSummary(before)}`);
    return;
  }
  await runModel();
  console.log(dev.compileSummary(0, 15));
  if (args.record) {
    const specs: PipelineSpec[] = dev.compileLog.map(({ key, entryPoint, constants, code }) => (constants ? { key, entryPoint, constants, code } : { key, entryPoint, code }));
    writeFileSync(`${args.record}.tmp`, JSON.stringify(specs));
    renameSync(`${args.record}.tmp`, args.record);
    console.log(`wrote ${specs.length} pipelines to ${args.record}`);
  }
}

#!/usr/bin/env node
// The `elbo-t2ialign` command: dispatches to the subcommands.
import { fileURLToPath } from 'node:url';
import { Device } from './tensor/index.js';

const HELP = `elbo-t2ialign: ELBO-T2IAlign zero-shot segmentation with Stable Diffusion, on WebGPU

Usage: elbo-t2ialign <command> [options]    (each command has --help)

Commands:
  segment          segment images given their classes (heatmaps, overlays, ELBO figures)
  segment-dataset  run segmentation over a dataset description (info.yaml), resumable
  evaluate         evaluate heatmaps against ground truth (mIoU, per class, by object size)
  generate         ELBO-reweighted text-to-image generation (images/NNNN.png + generation.json)
  clip-score       CLIP score of generated images against their prompts (as evaluate_generation.py)
  demo             segment the bundled example photographs with the bundled pipeline
  doctor           print the WebGPU adapter, its features and limits, and the kernel variants in use
`;

type Command = (args: string[]) => Promise<number>;

const commands: Record<string, () => Promise<Command>> = {
  doctor: async () => (await import('./commands/doctor.js')).runDoctor,
  segment: async () => (await import('./commands/segment.js')).runSegment,
  demo: async () => (await import('./commands/demo.js')).runDemo,
  evaluate: async () => (await import('./commands/evaluate.js')).runEvaluate,
  'segment-dataset': async () => (await import('./commands/segmentDataset.js')).runSegmentDataset,
  generate: async () => (await import('./commands/generate.js')).runGenerate,
  'clip-score': async () => (await import('./commands/clipScore.js')).runClipScore,
};

/** Runs the CLI with `argv` (without node and script); returns the exit code. */
export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    console.log(HELP);
    return cmd ? 0 : 1;
  }
  const load = commands[cmd];
  if (!load) {
    console.error(`elbo-t2ialign: unknown command "${cmd}"\n\n${HELP}`);
    return 2;
  }
  try {
    return await (await load())(rest);
  } catch (e) {
    const err = e as Error & { code?: string };
    if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || err.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
      console.error(`elbo-t2ialign ${cmd}: ${err.message} (see elbo-t2ialign ${cmd} --help)`);
      return 2;
    }
    console.error(`error: ${err.message}`);
    if (process.env.ELBO_DEBUG) console.error(err.stack);
    return 1;
  }
}

const isMain = process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1];
const viaBin = process.argv[1]?.endsWith('elbo-t2ialign.js') || process.argv[1]?.endsWith('elbo-t2ialign');
if (isMain || viaBin) {
  const code = await main(process.argv.slice(2));
  // ELBO_COMPILE_LOG=1: where a run's pipeline compile time went (a first run on a GPU with
  // a cold driver cache, or lavapipe's big unrolled kernels).
  const dev = await Device.peek();
  if (process.env.ELBO_COMPILE_LOG === '1' && dev) console.error(dev.compileSummary(0, 10));
  // Release the GPU device so the process exits promptly and cleanly.
  dev?.destroy();
  process.exitCode = code;
}

// `elbo-t2ialign demo` (npm run demo): segments the bundled example photographs with the
// bundled tiny pipeline (or --model), and says where the outputs are.
import { fileURLToPath } from 'node:url';
import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { runSegment } from './segment.js';

const EXAMPLES = fileURLToPath(new URL('../../examples/', import.meta.url));
const CASES: [string, string][] = [
  ['chelsea.png', 'cat'],
  ['coffee.png', 'cup,spoon,saucer'],
  ['astronaut.png', 'person,flag,helmet'],
];

export async function runDemo(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { out: { type: 'string' }, model: { type: 'string' }, force: { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } });
  if (values.help) {
    console.log('Usage: elbo-t2ialign demo [--out DIR] [--model DIR|hub-id] [--force]\nSegments examples/chelsea.png (cat), coffee.png (cup, spoon, saucer) and astronaut.png (person, flag, helmet).');
    return 0;
  }
  const out = resolve(values.out ?? 'demo-out');
  // The demo uses short timestep lists so it finishes in a minute or two on a CPU adapter.
  const quick = ["elbo_timesteps=[[1,999,100]]", 'collect_timesteps=[[20,201,60]]'];
  for (const [file, classes] of CASES) {
    console.log(`\n== ${file}: ${classes}`);
    const args = ['--image', join(EXAMPLES, file), '--classes', classes, '--out', out, ...quick];
    if (values.model) args.push('--model', values.model);
    if (values.force) args.push('--force');
    const code = await runSegment(args);
    if (code !== 0) return code;
  }
  console.log(`\nDemo done. Heatmaps: ${join(out, 'heatmaps')}  Overlays: ${join(out, 'overlays')}  ELBO figures: ${join(out, 'elbo.json')}`);
  if (!values.model) console.log('(Bundled random-weight pipeline: the maps show the pipeline works, not real segmentation. Use --model with a real SD checkpoint.)');
  return 0;
}

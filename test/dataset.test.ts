import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { encode as encodePng } from 'fast-png';
import {
  applyLabelMapping,
  classIndexOf,
  classNames,
  DatasetError,
  formatTemplate,
  labelsFromGt,
  loadDatasetConfig,
  loadGroundTruth,
  loadImageList,
  loadLabelsJson,
  parseOverrides,
} from '../src/elbo/dataset.ts';

const ROOT = new URL('../', import.meta.url).pathname;
const META = path.join(ROOT, 'metadata');
const FX = path.join(ROOT, 'test/fixtures/evaluation');

let tmp: string;
beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'elbo-dataset-test-'));
});
afterAll(() => {
  fs.rmSync(tmp, { recursive: true, force: true });
});

describe('info.yaml', () => {
  it('reads every project metadata file with its class count and templates', () => {
    const expected: Record<string, [string, number]> = {
      voc: ['voc', 20],
      coco: ['coco', 80],
      context: ['context', 59],
      ade20k: ['ade20k', 150],
      aep: ['aep', 38],
    };
    for (const [dir, [name, n]] of Object.entries(expected)) {
      const cfg = loadDatasetConfig(path.join(META, dir, 'info.yaml'));
      expect(cfg.dataset, dir).toBe(name);
      expect(cfg.categories.length, dir).toBe(n);
      expect(cfg.gtPath).toContain('{img_name}');
      expect(path.isAbsolute(cfg.dataNameList)).toBe(true);
    }
  });

  it('keeps class order, synonyms and background first', () => {
    const cfg = loadDatasetConfig(path.join(META, 'voc/info.yaml'));
    const names = classNames(cfg);
    expect(names[0]).toBe('background');
    expect(names[1]).toBe('plane');
    expect(names[20]).toBe('monitor');
    expect(cfg.categories[15]!.synonyms).toContain('potted plant');
    expect(cfg.bgCategory).toContain('sky');
  });

  it('resolves heatmap class names as the reference: name or synonym, first match', () => {
    const cfg = loadDatasetConfig(path.join(META, 'voc/info.yaml'));
    expect(classIndexOf(cfg, 'plant')).toBe(16);
    expect(classIndexOf(cfg, 'potted plant')).toBe(16);
    expect(classIndexOf(cfg, 'couch')).toBe(18);
    expect(classIndexOf(cfg, 'tram')).toBe(6); // buses before train
    expect(classIndexOf(cfg, 'aeroplane')).toBe(1);
    expect(classIndexOf(cfg, 'unicorn')).toBe(-1);
    expect(classIndexOf(cfg, 'background')).toBe(-1);
  });

  it('applies key=value overrides like OmegaConf dot-lists, and rejects unknown keys', () => {
    const ov = parseOverrides(['data_root=/x/y', 'gt_path={data_root}/gt/{img_name}.png', 'bucket_num=3', 'enable_crf=False', 'img_path=a', 'b.png']);
    expect(ov).toEqual([
      ['data_root', '/x/y'],
      ['gt_path', '{data_root}/gt/{img_name}.png'],
      ['bucket_num', 3],
      ['enable_crf', false],
      ['img_path', 'a b.png'],
    ]);
    const cfg = loadDatasetConfig(path.join(META, 'voc/info.yaml'), [
      ['data_root', '/x/y'],
      ['gt_path', '{data_root}/gt/{img_name}.png'],
    ]);
    expect(cfg.dataRoot).toBe('/x/y');
    expect(cfg.gtPath).toBe('{data_root}/gt/{img_name}.png');
    expect(() => loadDatasetConfig(path.join(META, 'voc/info.yaml'), [['no_such_key', 1]])).toThrow(/no_such_key/);
    expect(() => parseOverrides(['novalue'])).toThrow(/key=value/);
  });

  it('fails clearly on a malformed info.yaml', () => {
    const bad = path.join(tmp, 'bad.yaml');
    fs.writeFileSync(bad, 'dataset: x\ndata_root: .\ndata_name_list: ids.txt\nimg_path: a\ngt_path: b\nnum_cls: 3\ncategory:\n  cat: [cat]\n');
    expect(() => loadDatasetConfig(bad)).toThrow(/num_cls is 3 but "category" lists 1/);
    fs.writeFileSync(bad, 'dataset: x\ndata_root: .\n');
    expect(() => loadDatasetConfig(bad)).toThrow(/data_name_list/);
    expect(() => loadDatasetConfig(path.join(tmp, 'nope.yaml'))).toThrow(/nope\.yaml/);
  });

  it('resolves relative paths against the working directory, else the folder of info.yaml', () => {
    const dir = fs.mkdtempSync(path.join(tmp, 'rel-'));
    fs.writeFileSync(path.join(dir, 'ids.txt'), 'a\n');
    fs.writeFileSync(
      path.join(dir, 'info.yaml'),
      'dataset: mine\ndata_root: .\ndata_name_list: ids.txt\nimg_path: "{data_root}/img/{img_name}.jpg"\ngt_path: "{data_root}/gt/{img_name}.png"\ncategory:\n  cat:\n',
    );
    const cfg = loadDatasetConfig(path.join(dir, 'info.yaml'));
    expect(cfg.dataNameList).toBe(path.join(dir, 'ids.txt'));
    expect(cfg.categories).toEqual([{ name: 'cat', synonyms: [] }]);
  });
});

describe('templates and id lists', () => {
  it('formats path templates as Python str.format', () => {
    const f = { data_root: '/d', img_name: 'x1' };
    expect(formatTemplate('{data_root}/JPEGImages/{img_name}.jpg', f)).toBe('/d/JPEGImages/x1.jpg');
    expect(formatTemplate('{{lit}}/{img_name}', f)).toBe('{lit}/x1');
    expect(() => formatTemplate('{root}/{img_name}', f)).toThrow(/unknown field \{root\}/);
  });

  it('reads the id list with stable indices; blank lines are skipped with a warning', () => {
    const ids = path.join(tmp, 'ids.txt');
    fs.writeFileSync(ids, 'a\r\n\n b \nc\n');
    const cfg = loadDatasetConfig(path.join(META, 'voc/info.yaml'), [
      ['data_name_list', ids],
      ['data_root', '/r'],
    ]);
    const warnings: string[] = [];
    const list = loadImageList(cfg, (w) => warnings.push(w));
    expect(list.map((e) => [e.index, e.name])).toEqual([
      [0, 'a'],
      [2, 'b'],
      [3, 'c'],
    ]);
    expect(list[1]!.gtPath).toBe('/r/SegmentationClassAug/b.png');
    expect(list[1]!.imgPath).toBe('/r/JPEGImages/b.jpg');
    expect(warnings.join()).toMatch(/blank line/);
  });
});

describe('ground truth and image-level labels', () => {
  it('reads palette ground truth as indices, not colours', () => {
    const gt = loadGroundTruth(path.join(FX, 'gt/synth_000.png'), 'voc');
    expect([gt.width, gt.height]).toEqual([64, 48]);
    const values = new Set(gt.data);
    expect([...values].sort((a, b) => a - b)).toEqual([0, 8, 12, 255]);
    const cfg = loadDatasetConfig(path.join(META, 'voc/info.yaml'));
    expect(labelsFromGt(cfg, gt)).toEqual([7, 11]); // cat, dog (0-based category positions)
  });

  it('applies the COCO rule: +1, ids above 80 (and 255) become background', () => {
    const d = Uint8Array.from([0, 79, 80, 181, 255]);
    applyLabelMapping('coco', d);
    expect(Array.from(d)).toEqual([1, 80, 0, 0, 0]);
    const v = Uint8Array.from([0, 79, 255]);
    applyLabelMapping('voc', v);
    expect(Array.from(v)).toEqual([0, 79, 255]);
  });

  it('fails clearly on missing, undecodable or RGB ground truth', () => {
    expect(() => loadGroundTruth(path.join(tmp, 'none.png'), 'voc')).toThrow(/none\.png: file not found/);
    const junk = path.join(tmp, 'junk.png');
    fs.writeFileSync(junk, 'not a png');
    expect(() => loadGroundTruth(junk, 'voc')).toThrow(DatasetError);
    const rgb = path.join(tmp, 'rgb.png');
    fs.writeFileSync(rgb, encodePng({ width: 1, height: 1, channels: 3, depth: 8, data: Uint8Array.from([1, 2, 3]) }));
    expect(() => loadGroundTruth(rgb, 'voc')).toThrow(/single-channel label map.*RGB/);
  });

  it('reads labels from a user JSON: class names / synonyms or a multi-hot list', () => {
    const cfg = loadDatasetConfig(path.join(META, 'voc/info.yaml'));
    const f = path.join(tmp, 'labels.json');
    const hot = new Array(20).fill(0);
    hot[0] = 1;
    hot[19] = 1;
    fs.writeFileSync(f, JSON.stringify({ a: ['dog', 'couch', 'cat'], b: hot, c: [] }));
    const m = loadLabelsJson(cfg, f);
    expect(m.get('a')).toEqual([7, 11, 17]);
    expect(m.get('b')).toEqual([0, 19]);
    expect(m.get('c')).toEqual([]);
    fs.writeFileSync(f, JSON.stringify({ a: ['unicorn'] }));
    expect(() => loadLabelsJson(cfg, f)).toThrow(/unknown class "unicorn"/);
    fs.writeFileSync(f, JSON.stringify({ a: [1, 0] }));
    expect(() => loadLabelsJson(cfg, f)).toThrow(/20 entries/);
  });
});

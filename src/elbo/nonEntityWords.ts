/**
 * The non-entity keywords of ELBO-T2IAlign's generation script: a noun chunk whose root word
 * (lower-cased text) is one of these is not treated as an object phrase, so it is neither scored
 * nor re-weighted (e.g. "a group of people" -> only "people").
 *
 * Source: the public GitHub repository VCG-team/elbo-t2ialign, configs/run_generation.yaml, key
 * `non_entity_keywords` (read by run_generation.py into NON_ENTITY_KEYWORDS), copied in the
 * file's order. The YAML lists "part", "section", "result" and "factor" twice; the set
 * ignores that.
 */
export const NON_ENTITY_KEYWORD_LIST: readonly string[] = Object.freeze([
  'group', 'bunch', 'lot', 'piece', 'part', 'kind', 'sort', 'type', 'category', 'set', 'stack',
  'pile', 'collection', 'series', 'array', 'batch', 'range', 'pair', 'couple', 'portion', 'class',
  'form', 'member', 'middle', 'edge', 'corner', 'side', 'center', 'end', 'top', 'bottom',
  'surface', 'front', 'back', 'area', 'section', 'region', 'zone', 'field', 'space', 'boundary',
  'line', 'layer', 'time', 'moment', 'period', 'phase', 'era', 'duration', 'stage', 'age',
  'interval', 'point', 'second', 'minute', 'hour', 'day', 'amount', 'quantity', 'number', 'total',
  'sum', 'level', 'degree', 'majority', 'minority', 'plenty', 'few', 'several', 'many', 'much',
  'idea', 'concept', 'notion', 'thought', 'plan', 'system', 'process', 'method', 'way', 'approach',
  'strategy', 'technique', 'style', 'rule', 'principle', 'aspect', 'factor', 'condition', 'state',
  'case', 'example', 'instance', 'thing', 'stuff', 'item', 'object', 'activity', 'task', 'project',
  'event', 'action', 'behavior', 'option', 'choice', 'possibility', 'result', 'outcome', 'effect',
  'issue', 'problem', 'solution', 'question', 'answer', 'reason', 'cause', 'purpose', 'goal',
  'aim', 'target', 'cluster', 'network', 'subgroup', 'segment', 'fraction', 'component', 'module',
  'element', 'unit', 'block', 'part', 'section', 'chapter', 'row', 'column', 'list', 'table',
  'chart', 'diagram', 'graph', 'data', 'information', 'evidence', 'result', 'statistic', 'figure',
  'record', 'detail', 'value', 'metric', 'parameter', 'variable', 'factor', 'trend', 'estimate',
  'calculation', 'measurement', 'observation', 'report', 'analysis', 'summary',
]);

/** {@link NON_ENTITY_KEYWORD_LIST} as a set, for lower-case lookups. */
export const NON_ENTITY_KEYWORDS: ReadonlySet<string> = new Set(NON_ENTITY_KEYWORD_LIST);

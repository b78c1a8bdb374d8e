// Prompt embeddings kept on the GPU between uses, bounded: a dataset run brings a new source
// prompt with nearly every image, and each (1, 77, 768) f32 embedding is 236 KB that would
// otherwise stay for the whole run.

/** The default number of prompts a pipeline keeps embedded (beyond those of the latest call). */
export const EMBEDDING_CACHE_LIMIT = 64;

/**
 * Embeddings by prompt, least recently prepared first. `touch` marks the prompts one call
 * needs as the newest, `trim` then frees the oldest beyond `limit`, never one of those.
 */
export class EmbeddingCache<E> {
  private map = new Map<string, E>();

  constructor(
    private readonly free: (e: E) => void,
    public limit = EMBEDDING_CACHE_LIMIT,
  ) {}

  get size(): number {
    return this.map.size;
  }

  get(prompt: string): E | undefined {
    return this.map.get(prompt);
  }

  has(prompt: string): boolean {
    return this.map.has(prompt);
  }

  set(prompt: string, e: E): void {
    this.map.set(prompt, e);
  }

  /** Moves the cached ones of `prompts` to the newest end; returns those not cached. */
  touch(prompts: readonly string[]): string[] {
    const missing: string[] = [];
    for (const p of prompts) {
      const e = this.map.get(p);
      if (e === undefined) {
        if (!missing.includes(p)) missing.push(p);
        continue;
      }
      this.map.delete(p);
      this.map.set(p, e);
    }
    return missing;
  }

  /**
   * A pipeline's prepareEmbeddings: `prompts` become the newest; the missing ones are made
   * by `make` after `load` (which loads an offloaded text encoder again), then the oldest
   * beyond the limit are freed.
   */
  async prepare(prompts: readonly string[], load: () => Promise<unknown>, make: (prompt: string) => unknown): Promise<void> {
    const missing = this.touch(prompts);
    if (missing.length) {
      await load();
      for (const p of missing) make(p);
    }
    this.trim(prompts);
  }

  /** Frees the oldest embeddings beyond the limit, keeping those of `keep`. */
  trim(keep: readonly string[]): void {
    const held = new Set(keep);
    for (const [p, e] of this.map) {
      if (this.map.size <= Math.max(this.limit, held.size)) break;
      if (held.has(p)) continue;
      this.map.delete(p);
      this.free(e);
    }
  }

  clear(): void {
    for (const e of this.map.values()) this.free(e);
    this.map.clear();
  }
}

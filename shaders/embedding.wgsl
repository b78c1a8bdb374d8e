// Row gather out[i, :] = table[ids[i], :] for the ids whose row lies in this dispatch's
// window of the table (rows [r0, r0 + rows)); tables above the binding limit take several
// dispatches, and so do outputs (runs of ids, each with its own id and output windows).
// {{LOAD}} reads one element of the table (f32, or f16 packed two per u32).
struct P {
  total: u32, nx: u32, d: u32, r0: u32,
  rows: u32, base: u32, id_base: u32, out_base: u32,
}
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> table: array<{{TT}}>;
@group(0) @binding(2) var<storage, read> ids: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn ld(i: u32) -> f32 {
  {{LOAD}}
}

@compute @workgroup_size({{WG}})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let i = gid.x + gid.y * p.nx * {{WG}}u;
  if (i >= p.total) { return; }
  let row = i / p.d;
  let col = i % p.d;
  let id = ids[p.id_base + row];
  if (id < p.r0 || id >= p.r0 + p.rows) { return; }
  out[p.out_base + i] = ld(p.base + (id - p.r0) * p.d + col);
}

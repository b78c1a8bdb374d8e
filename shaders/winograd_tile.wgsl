// Shared by winograd_input / winograd_output: invocation i covers four channels from
// 4 * (i % c4n) of tile t0 + i / c4n, tiles of TM x TM outputs numbered over B images of
// ceil(rows / TM) x tilesX.
const TM = {{TM}}u;
struct Tile { c4: u32, tl: u32, b: u32, ty: u32, tx: u32 }
fn tileOf(i: u32, c4n: u32, t0: u32, tilesX: u32, rows: u32) -> Tile {
  let tl = i / c4n;
  let t = t0 + tl;
  let tpi = tilesX * ((rows + TM - 1u) / TM);
  return Tile(i % c4n, tl, t / tpi, (t % tpi) / tilesX, t % tilesX);
}

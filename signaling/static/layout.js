// Where the tiles go: the grid that gives `count` tiles of one aspect ratio the largest size
// in the space there is. Pure (numbers in, numbers out), so any window shape and any number
// of people get the same answer in the page and in a test.

/** Width over height of a tile: the camera's 4:3 (a wider picture is letterboxed in it). */
export const TILE_ASPECT = 4 / 3;

/**
 * The columns and rows that make `count` tiles of `aspect` largest in `width` x `height`
 * with `gap` between them, and the tile size (whole pixels, so a row never overflows).
 * @returns {{cols: number, rows: number, tileWidth: number, tileHeight: number}}
 */
export function bestGrid({ width, height, count, gap = 0, aspect = TILE_ASPECT }) {
  const n = Math.max(1, count);
  let best = { cols: 1, rows: n, tileWidth: 0, tileHeight: 0 };
  for (let cols = 1; cols <= n; cols++) {
    const rows = Math.ceil(n / cols);
    const byWidth = (width - (cols - 1) * gap) / cols;
    const byHeight = ((height - (rows - 1) * gap) / rows) * aspect;
    const tileWidth = Math.floor(Math.min(byWidth, byHeight));
    if (tileWidth > best.tileWidth) {
      best = { cols, rows, tileWidth, tileHeight: Math.floor(tileWidth / aspect) };
    }
  }
  return best;
}

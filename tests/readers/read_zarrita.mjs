// Reads every array of a zarr v3 group with zarrita (an independent JavaScript implementation of zarr v3) and
// prints one JSON line per array: its data type, shape and the sha256 of its values as little-endian bytes (the
// values themselves for strings), or the error that stopped the read. Used by tests/test_interop.py: node read_zarrita.mjs STORE GROUP
import * as zarr from "zarrita";
import { FileSystemStore } from "@zarrita/storage";
import { readdirSync, statSync } from "node:fs";
import { createHash } from "node:crypto";
import { join } from "node:path";

const [root, group] = process.argv.slice(2);
const store = new FileSystemStore(root);
for (const name of readdirSync(join(root, group)).sort()) {
  if (!statSync(join(root, group, name)).isDirectory()) continue;
  const out = { name };
  try {
    const array = await zarr.open.v3(zarr.root(store).resolve(`${group}/${name}`), { kind: "array" });
    if (array.shape.includes(0)) {  // zarrita 0.7.5's get() throws on an empty selection; nothing to read
      Object.assign(out, { dtype: array.dtype, shape: array.shape, sha256: createHash("sha256").digest("hex") });
      console.log(JSON.stringify(out));
      continue;
    }
    const chunk = await zarr.get(array);
    const data = chunk.data;
    Object.assign(out, { dtype: array.dtype, shape: chunk.shape });
    // typed arrays, and zarrita's BoolArray (one byte per value over an ArrayBuffer)
    const view = ArrayBuffer.isView(data) ? data : data.buffer instanceof ArrayBuffer ? new Uint8Array(data.buffer) : null;
    if (view !== null) {
      const bytes = Buffer.from(view.buffer, view.byteOffset, view.byteLength);
      out.sha256 = createHash("sha256").update(bytes).digest("hex");
    } else {
      out.values = Array.from(data);
    }
  } catch (error) {
    out.error = `${error.name}: ${error.message}`;
  }
  console.log(JSON.stringify(out));
}

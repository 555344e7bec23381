// Framing on the `meshpeer` data channel (PROTOCOL.md section 16.2). Browsers and aiortc
// disagree on the largest SCTP message, so no frame is over 16 KiB: larger messages go as
// pieces behind a kind byte and are joined again here. Pure: no channel, no timers.

/** The largest frame, in bytes. */
export const MAX_FRAME = 16384;
/** Payload bytes per binary frame (one byte goes to the kind). */
export const MAX_PIECE = MAX_FRAME - 1;
/** A message whose pieces add up to more than this is dropped by the receiver. */
export const MAX_MESSAGE = 16 * 1024 * 1024;

/** The first byte of every binary frame. */
export const Kind = Object.freeze({
  WHOLE: 0x00,
  BINARY_PIECE: 0x01,
  BINARY_LAST: 0x02,
  TEXT_PIECE: 0x03,
  TEXT_LAST: 0x04,
});

const utf8 = new TextEncoder();
const fromUtf8 = new TextDecoder();

/** `data` (ArrayBuffer or any view) as a Uint8Array over the same bytes. */
export function asBytes(data) {
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) {
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  throw new TypeError("a meshpeer message is a string, an ArrayBuffer or a typed array");
}

/** Bytes of `message` on the wire (UTF-8 for a string); TypeError for anything else. */
export function messageSize(message) {
  return typeof message === "string" ? utf8.encode(message).length : asBytes(message).length;
}

function frame(kind, payload) {
  const out = new Uint8Array(payload.length + 1);
  out[0] = kind;
  out.set(payload, 1);
  return out;
}

function* pieces(bytes, more, last) {
  for (let start = 0; start < bytes.length; start += MAX_PIECE) {
    const end = Math.min(start + MAX_PIECE, bytes.length);
    yield frame(end < bytes.length ? more : last, bytes.subarray(start, end));
  }
}

/**
 * The frames of one message (a string, or bytes), in sending order: a string frame, or
 * Uint8Arrays that start with their kind. Lazy, so a large message is never copied whole.
 */
export function* frames(message) {
  if (typeof message === "string") {
    // A UTF-16 unit is at most 3 UTF-8 bytes: short strings need no encoding to measure.
    if (message.length * 3 <= MAX_FRAME) {
      yield message;
      return;
    }
    const bytes = utf8.encode(message);
    if (bytes.length <= MAX_FRAME) yield message;
    else yield* pieces(bytes, Kind.TEXT_PIECE, Kind.TEXT_LAST);
    return;
  }
  const bytes = asBytes(message);
  if (bytes.length <= MAX_PIECE) yield frame(Kind.WHOLE, bytes);
  else yield* pieces(bytes, Kind.BINARY_PIECE, Kind.BINARY_LAST);
}

/**
 * Joins the frames of one channel into messages. `push` answers `{message}` (a string or an
 * ArrayBuffer) when one is whole, `{dropped}` (why, for a log line) when a frame or a
 * message is thrown away, or null while a message is still being joined.
 */
export class Reassembler {
  constructor(limit = MAX_MESSAGE) {
    this.limit = limit;
    this.#reset();
  }

  /** Bytes held of the message being joined (0 when none). */
  get joining() {
    return this.kind ? this.size : 0;
  }

  /** A string frame, or an ArrayBuffer (the channel's binaryType is "arraybuffer"). */
  push(data) {
    if (typeof data === "string") return { message: data };
    const bytes = asBytes(data);
    if (bytes.length === 0) return { dropped: "an empty binary frame" };
    const payload = bytes.subarray(1);
    switch (bytes[0]) {
      case Kind.WHOLE:
        return { message: payload.slice().buffer };
      case Kind.BINARY_PIECE:
      case Kind.BINARY_LAST:
        return this.#piece("binary", bytes[0] === Kind.BINARY_LAST, payload);
      case Kind.TEXT_PIECE:
      case Kind.TEXT_LAST:
        return this.#piece("text", bytes[0] === Kind.TEXT_LAST, payload);
      default:
        return { dropped: `a frame of unknown kind ${bytes[0]}` };
    }
  }

  /** Forget the message being joined (its sender left); answers the bytes thrown away. */
  discard() {
    const held = this.joining;
    this.#reset();
    return held;
  }

  #piece(kind, last, payload) {
    if (this.kind && this.kind !== kind) {
      return { dropped: `a ${kind} piece inside a ${this.kind} message` };
    }
    this.kind = kind;
    this.size += payload.length;
    let result = null;
    if (!this.overflow && this.size > this.limit) {
      this.overflow = true; // said once; the rest of its pieces are skipped quietly
      this.parts = [];
      result = { dropped: `a ${kind} message over the ${this.limit}-byte limit` };
    } else if (!this.overflow) {
      this.parts.push(payload);
    }
    if (!last) return result;
    const { parts, size, overflow } = this;
    this.#reset();
    if (overflow) return result;
    const whole = new Uint8Array(size);
    let offset = 0;
    for (const part of parts) {
      whole.set(part, offset);
      offset += part.length;
    }
    return { message: kind === "text" ? fromUtf8.decode(whole) : whole.buffer };
  }

  #reset() {
    this.kind = null; // "binary" or "text" while a message is being joined
    this.parts = [];
    this.size = 0;
    this.overflow = false;
  }
}

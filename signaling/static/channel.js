// The `meshpeer` data channel of one link (PROTOCOL.md section 16): framing on the way out
// and in, flow control, and a bounded wait for the channel to open. One per PeerLink; the
// RTCDataChannel arrives later (created with the first offer, or received as the answerer).

import { MAX_FRAME, Reassembler, frames } from "./chunks.js";

/** Most bytes left queued in the channel; beyond it we wait for `bufferedamountlow`. */
export const MAX_BUFFERED = 1024 * 1024;
/** Where `bufferedamountlow` fires: refilled from here, the channel never runs dry. */
export const LOW_WATER = 256 * 1024;
/** Messages that may wait (for the channel to open, or for room in it); more are dropped. */
export const MAX_WAITING = 64;
/** How long a message waits for the channel to open before it is dropped. */
export const OPEN_WAIT_MS = 10_000;
/**
 * `meshpeer` channels one link holds at once: each side's first offer carries one, so glare
 * makes two. Only a broken or hostile peer opens more; each would hold its own buffers.
 */
export const MAX_CHANNELS = 2;

/**
 * Send with `send(data)` (a string, or bytes): it answers true once the whole message is in
 * the channel, false if it was dropped. Every drop is also told to `onDropped({count,
 * reason})`; whole messages received go to `onMessage(data)` (a string or an ArrayBuffer).
 */
export class MeshChannel {
  constructor({
    peerId,
    onMessage,
    onDropped,
    maxBuffered = MAX_BUFFERED,
    maxWaiting = MAX_WAITING,
    openWaitMs = OPEN_WAIT_MS,
  }) {
    this.peerId = peerId;
    this.onMessage = onMessage;
    this.onDropped = onDropped;
    this.maxBuffered = maxBuffered;
    this.maxWaiting = maxWaiting;
    this.openWaitMs = openWaitMs;
    this.channel = null; // the one we send on
    this.receiving = new Map(); // every open `meshpeer` channel of the link -> its Reassembler
    this.refused = 0; // channels closed for being over MAX_CHANNELS
    this.waiting = []; // {data, since, done}
    this.current = null; // the message being written, taken off `waiting`
    this.pumping = false;
    this.wake = null; // resolves the wait for `bufferedamountlow`
    this.expiry = null;
    this.closed = false;
  }

  /** "none" until a channel is attached, then its readyState. */
  get state() {
    return this.channel?.readyState ?? "none";
  }

  /** Bytes held of messages being joined. */
  get joining() {
    let total = 0;
    for (const reassembler of this.receiving.values()) total += reassembler.joining;
    return total;
  }

  /**
   * A `meshpeer` RTCDataChannel of this link. The first is the one we send on; another
   * (both sides offered at once) is only read; one beyond MAX_CHANNELS is closed at once.
   */
  attach(dc) {
    if (this.closed || this.receiving.has(dc)) return;
    if (this.receiving.size >= MAX_CHANNELS) {
      dc.close();
      if (this.refused++ === 0) {
        console.warn(
          `meshpeer: ${this.peerId} opened more \`meshpeer\` channels than the ${MAX_CHANNELS} a link needs; closing the rest`,
        );
      }
      return;
    }
    dc.binaryType = "arraybuffer";
    const reassembler = new Reassembler();
    this.receiving.set(dc, reassembler);
    dc.addEventListener("message", ({ data }) => {
      const result = reassembler.push(data);
      if (result?.message !== undefined) this.onMessage(result.message);
      else if (result?.dropped) {
        console.warn(`meshpeer: dropped ${result.dropped} from ${this.peerId}`);
      }
    });
    dc.addEventListener("close", () => {
      this.#discard(dc);
      if (dc === this.channel) this.close("the connection closed");
    });
    if (this.channel) return;
    this.channel = dc;
    dc.bufferedAmountLowThreshold = LOW_WATER;
    dc.addEventListener("bufferedamountlow", () => this.#wakeUp());
    dc.addEventListener("open", () => this.#pump());
    this.#pump();
  }

  send(data) {
    if (this.closed) {
      this.onDropped({ count: 1, reason: "the connection closed" });
      return Promise.resolve(false);
    }
    if (this.waiting.length >= this.maxWaiting) {
      this.onDropped({ count: 1, reason: `${this.maxWaiting} messages were already waiting` });
      return Promise.resolve(false);
    }
    return new Promise((done) => {
      this.waiting.push({ data, since: performance.now(), done });
      if (this.state === "open") this.#pump();
      else this.#armExpiry();
    });
  }

  /** The link is gone: whatever waits or is half written is dropped (and reported). */
  close(reason = "the connection closed") {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.expiry);
    const lost = this.waiting.splice(0);
    if (this.current) lost.unshift(this.current);
    this.current = null;
    this.#wakeUp();
    for (const dc of this.receiving.keys()) this.#discard(dc);
    for (const item of lost) item.done(false);
    if (lost.length) this.onDropped({ count: lost.length, reason });
  }

  async #pump() {
    if (this.pumping || this.closed || this.state !== "open") return;
    clearTimeout(this.expiry);
    this.pumping = true;
    try {
      while (!this.closed && this.waiting.length && this.state === "open") {
        this.current = this.waiting.shift();
        const sent = await this.#write(this.current.data);
        if (this.closed) return; // close() has reported it
        const item = this.current;
        this.current = null;
        item.done(sent);
        if (!sent) this.onDropped({ count: 1, reason: "the channel refused it" });
      }
    } finally {
      this.pumping = false;
    }
  }

  /** Frames of one message, back to back, never more than `maxBuffered` queued. */
  async #write(data) {
    const dc = this.channel;
    for (const frame of frames(data)) {
      while (dc.bufferedAmount > this.maxBuffered - MAX_FRAME) {
        await new Promise((resolve) => {
          this.wake = resolve;
        });
        if (this.closed || dc.readyState !== "open") return false;
      }
      try {
        dc.send(frame);
      } catch (error) {
        console.warn(`meshpeer: could not send to ${this.peerId}`, error);
        return false;
      }
    }
    return true;
  }

  #wakeUp() {
    const wake = this.wake;
    this.wake = null;
    wake?.();
  }

  /** Drop what waited too long for the channel to open; look again when the next one is due. */
  #armExpiry() {
    clearTimeout(this.expiry);
    if (this.closed || this.state === "open" || !this.waiting.length) return;
    const due = this.waiting[0].since + this.openWaitMs - performance.now();
    this.expiry = setTimeout(() => {
      if (this.closed || this.state === "open") return;
      const now = performance.now();
      const stale = this.waiting.filter((item) => now - item.since >= this.openWaitMs);
      this.waiting = this.waiting.filter((item) => now - item.since < this.openWaitMs);
      for (const item of stale) item.done(false);
      if (stale.length) {
        const wait = `${this.openWaitMs / 1000} s`;
        this.onDropped({ count: stale.length, reason: `no data channel within ${wait}` });
      }
      this.#armExpiry();
    }, Math.max(0, due));
  }

  #discard(dc) {
    const held = this.receiving.get(dc)?.discard() ?? 0;
    this.receiving.delete(dc); // its place is free again
    if (held) console.debug(`meshpeer: ${this.peerId} left ${held} bytes of a message unfinished`);
  }
}

// The WebSocket side: join, hand every frame to the page, rejoin with the resume token
// after a dropped connection.

import { FINAL_CLOSE_CODES, FINAL_ERROR_CODES } from "./messages.js";

/** Quick while a restarting server is likely to be back (at most 1 s apart for ~7 s), then
 * backing off to 5 s: the same schedule as the Python agent (peer.mesh.RECONNECT_DELAYS). */
const RETRY_DELAYS_MS = [250, 500, 1000, 1000, 1000, 1000, 1000, 1000, 2000, 4000, 5000];
/** Each reconnect delay is spread over ±this fraction (as the Python agent does). */
const RETRY_JITTER = 0.25;
/** The server probes a taken ID's holder and frees it within ~2 s if it is dead (e.g. our
 * own previous page after a crash): ask once more after that before giving up. */
const TAKEN_RETRY_MS = 2500;
const ID_TAKEN_CLOSE = 4409;

/**
 * Milliseconds to wait before reconnect `attempt` (0 first): capped exponential backoff,
 * spread over ±25% by `random` (in [0, 1), Math.random() in use). Without the spread every
 * page in a room comes back to a restarted server in the same millisecond, attempt after
 * attempt. Pure, so tests check it without waiting.
 */
export function retryDelay(attempt, random) {
  const base = RETRY_DELAYS_MS[Math.min(Math.max(0, attempt), RETRY_DELAYS_MS.length - 1)];
  return base * (1 - RETRY_JITTER + 2 * RETRY_JITTER * random);
}

/**
 * Events (all CustomEvent, the payload in `detail`):
 *   "joined"     {peers, room, resumed, iceServers}
 *                                          after every accepted join (peer-list); iceServers:
 *                                          the server's RTCIceServer list for this peer (fresh
 *                                          TURN credentials each time), null when it sent none
 *   "message"    the parsed frame          offer/answer/candidate/peer-joined/peer-left/...
 *   "server-error" {code, message}         an `error` frame
 *   "disconnected" {code, final, everJoined, nameCheck}
 *                                          the socket closed; final: no retry will follow;
 *                                          nameCheck: our ID was taken, asking again once
 */
export class SignalingClient extends EventTarget {
  /**
   * @param {string} url ws:// or wss:// address of the server
   * @param {{peerId: string, room: string|null, token?: string|null}} options token: the
   *   invitation (JWT) sent in every join, the first and each rejoin, when the page has one
   */
  constructor(url, { peerId, room, token = null }) {
    super();
    this.url = url;
    this.peerId = peerId;
    this.room = room;
    this.token = token;
    this.resumeToken = null;
    this.joinedOnce = false;
    this.ws = null;
    this.stopped = false;
    this.attempt = 0;
    this.retryTimer = null;
    this.takenRetried = false;
    /** The server refused our invitation: no retry can succeed, whatever the close code says. */
    this.refusedForGood = false;
    this.joinSentAt = null; // epoch ms of the latest join, for timing first frames
  }

  connect() {
    if (this.stopped) return;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.addEventListener("open", () => {
      const join = { type: "join", peerId: this.peerId };
      if (this.room) join.room = this.room;
      if (this.resumeToken) join.resumeToken = this.resumeToken;
      if (this.token) join.token = this.token;
      this.joinSentAt = performance.timeOrigin + performance.now();
      ws.send(JSON.stringify(join));
    });
    ws.addEventListener("message", (event) => this.#receive(event.data));
    ws.addEventListener("close", (event) => this.#closed(ws, event.code));
  }

  /** Send one message; dropped while disconnected (a rejoin renegotiates everything). */
  send(message) {
    if (this.ws?.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
    }
  }

  /** Leave for good: the server tells the others `peer-left` at once. */
  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.ws?.close(1000, "leaving");
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      console.warn("meshpeer: ignoring a frame that is not JSON", data);
      return;
    }
    if (typeof message !== "object" || message === null) return;
    if (message.type === "peer-list") {
      this.attempt = 0;
      if (typeof message.resumeToken === "string") this.resumeToken = message.resumeToken;
      if (typeof message.room === "string") this.room = message.room;
      const resumed = this.joinedOnce;
      this.joinedOnce = true;
      const peers = Array.isArray(message.peers) ? message.peers : []; // the Go server omits []
      const iceServers = Array.isArray(message.iceServers) ? message.iceServers : null;
      this.#emit("joined", { peers, room: this.room, resumed, iceServers });
    } else if (message.type === "error") {
      if (FINAL_ERROR_CODES.has(message.code)) this.refusedForGood = true;
      this.#emit("server-error", { code: message.code, message: message.message });
    } else {
      this.#emit("message", message);
    }
  }

  #closed(ws, code) {
    if (ws !== this.ws) return;
    const nameCheck =
      code === ID_TAKEN_CLOSE && !this.stopped && !this.joinedOnce && !this.takenRetried;
    const final =
      !nameCheck && (this.stopped || this.refusedForGood || FINAL_CLOSE_CODES.has(code));
    this.#emit("disconnected", { code, final, everJoined: this.joinedOnce, nameCheck });
    if (final) {
      this.stopped = true;
      return;
    }
    let delay = retryDelay(this.attempt, Math.random());
    if (nameCheck) {
      this.takenRetried = true;
      delay = TAKEN_RETRY_MS;
    }
    this.attempt += 1;
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }
}

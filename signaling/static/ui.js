// Everything the page shows: the status line, notices, the peer list and the video tiles.
// No networking here; app.js decides, this module draws.

import { bestGrid } from "./layout.js";

const STATE_TEXT = {
  connecting: "connecting…",
  connected: "connected",
  disconnected: "connection interrupted",
  failed: "connection failed",
};
/** The same, short enough for the people list. */
const STATE_WORD = {
  connecting: "connecting…",
  connected: "connected",
  disconnected: "interrupted",
  failed: "failed",
};

function now() {
  return performance.timeOrigin + performance.now();
}

function element(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
}

export class View {
  constructor(doc) {
    this.doc = doc;
    this.tilesEl = doc.getElementById("tiles");
    this.listEl = doc.getElementById("peer-list");
    this.countEl = doc.getElementById("peer-count");
    this.emptyEl = doc.getElementById("empty");
    this.noticesEl = doc.getElementById("notices");
    this.statusEl = doc.getElementById("status");
    this.localTile = doc.getElementById("local-tile");
    this.localVideo = doc.getElementById("local-video");
    this.peers = new Map(); // peerId -> {tile, video, badge, item, stateEl}
    /** Called with a peer ID when the person asks to retry a failed connection. */
    this.onRetry = null;
    this.soundBlocked = false;
    /** Epoch ms of the first video frame shown per peer (read by tests and the benchmark). */
    this.firstFrameAt = new Map();
    this.shares = new Map(); // key (a peer ID, "" for ours) -> {tile, video, track}
    /** The grid last applied (tests and the console read it). */
    this.grid = null;
    // The tiles fill whatever the window leaves them: again on every resize, join and leave.
    new ResizeObserver(() => this.layout()).observe(this.tilesEl);
  }

  /** Size the tiles: the grid that makes them largest in the space the tiles element has. */
  layout() {
    const count = this.tilesEl.querySelectorAll(".tile").length;
    const gap = parseFloat(getComputedStyle(this.tilesEl).columnGap) || 0;
    const grid = bestGrid({
      width: this.tilesEl.clientWidth,
      height: this.tilesEl.clientHeight,
      count,
      gap,
    });
    this.grid = { ...grid, count };
    this.tilesEl.style.setProperty("--tile-w", `${grid.tileWidth}px`);
    this.tilesEl.style.setProperty("--tile-h", `${grid.tileHeight}px`);
  }

  setIdentity(peerId, room) {
    this.doc.getElementById("self-name").textContent = peerId;
    this.doc.getElementById("room-name").textContent = room ?? "default";
    this.localTile.querySelector(".name").textContent = `You (${peerId})`;
    this.doc.title = `${room ?? "default"} · meshpeer`;
  }

  /**
   * The address others open to join this room (without our ID: theirs must differ). Null
   * when the room needs invitations: each person needs their own link, which we cannot make.
   */
  setInvite(url) {
    if (!url) {
      this.emptyEl.replaceChildren(
        "Nobody else is here yet. Each person joins this room with their own invitation link; keep yours to yourself, it lets its holder join as you.",
      );
      return;
    }
    const link = element("a", { href: url, textContent: url });
    this.emptyEl.replaceChildren("Nobody else is here yet. Invite others with this address: ", link);
  }

  setStatus(state, text) {
    this.statusEl.dataset.state = state;
    this.statusEl.textContent = text;
  }

  /** A notice stays until replaced (same key) or dismissed. */
  notice(key, text, { level = "error", action = null } = {}) {
    this.clearNotice(key);
    if (!text) return;
    const box = element("div", { className: `notice ${level}` });
    box.dataset.key = key;
    box.setAttribute("role", level === "error" ? "alert" : "status");
    box.append(element("p", { textContent: text }));
    if (action) {
      const button = element("button", { type: "button", textContent: action.label });
      button.addEventListener("click", () => action.run());
      box.append(button);
    }
    const close = element("button", {
      type: "button",
      className: "dismiss",
      textContent: "×",
      title: "Dismiss",
    });
    close.setAttribute("aria-label", "Dismiss");
    close.addEventListener("click", () => box.remove());
    box.append(close);
    this.noticesEl.append(box);
  }

  clearNotice(key) {
    for (const old of this.noticesEl.querySelectorAll(".notice")) {
      if (old.dataset.key === key) old.remove();
    }
  }

  showLocal(local) {
    const hasVideo = Boolean(local.video);
    this.localTile.classList.toggle("no-video", !hasVideo);
    if (!hasVideo) {
      this.localTile.querySelector(".placeholder span").textContent = local.audio
        ? "microphone only"
        : "watching only";
      this.localTile.querySelector(".badge").textContent = "not sending video";
    }
    this.localVideo.srcObject = local.stream;
    this.localVideo.play().catch(() => {});
  }

  /** Our camera is off for good (left, refused): say so instead of a black picture. */
  stopLocal(text) {
    this.localVideo.srcObject = null;
    this.localTile.classList.add("no-video");
    this.localTile.querySelector(".placeholder span").textContent = text;
    this.localTile.querySelector(".badge").textContent = "not in the room";
  }

  setLocalMuted(kind, muted) {
    this.localTile.classList.toggle(kind === "video" ? "camera-off" : "mic-off", muted);
    if (kind === "video") {
      this.localTile.querySelector(".placeholder span").textContent = "camera off";
    }
  }

  // -- remote peers -------------------------------------------------------------
  addPeer(peerId) {
    if (this.peers.has(peerId)) return;
    const video = element("video", { playsInline: true, autoplay: false });
    const badge = element("span", { className: "badge", textContent: STATE_TEXT.connecting });
    const quality = element("span", { className: "quality" });
    const tile = element("figure", { className: "tile remote no-video" }, [
      video,
      element("div", { className: "placeholder" }, [element("span", { textContent: peerId })]),
      element("figcaption", {}, [
        element("span", { className: "name", textContent: peerId }),
        badge,
        quality,
      ]),
    ]);
    tile.dataset.peer = peerId;
    tile.dataset.state = "connecting";
    const stateEl = element("span", { className: "state", textContent: STATE_TEXT.connecting });
    const retry = element("button", { type: "button", className: "retry", textContent: "Retry" });
    retry.addEventListener("click", () => this.onRetry?.(peerId));
    const item = element("li", {}, [
      element("span", { className: "name", textContent: peerId }),
      stateEl,
      retry,
    ]);
    item.dataset.peer = peerId;
    item.dataset.state = "connecting";
    // The tile's <video> outlives its streams (a replaced connection brings a new one), so
    // its listeners are added here, once, and read whatever stream it shows at the time.
    const showVideo = () => {
      const tracks = video.srcObject?.getVideoTracks() ?? [];
      const live = tracks.some((t) => t.readyState === "live" && !t.muted);
      tile.classList.toggle("no-video", !live);
    };
    const firstFrame = () => {
      if (video.videoWidth > 0 && !this.firstFrameAt.has(peerId)) {
        this.firstFrameAt.set(peerId, now());
        tile.classList.add("playing");
        showVideo();
      }
    };
    video.addEventListener("loadeddata", firstFrame);
    video.addEventListener("resize", firstFrame);
    this.tilesEl.append(tile);
    this.listEl.append(item);
    this.peers.set(peerId, { tile, video, badge, quality, item, stateEl, showVideo });
    this.#updateCount();
  }

  /** How the connection to `peerId` does: "good", "fair" or "poor" (stats.js), with figures. */
  setPeerQuality(peerId, { quality, rttMs, lossPercent }) {
    const peer = this.peers.get(peerId);
    if (!peer) return;
    peer.quality.dataset.quality = quality;
    peer.quality.textContent = quality;
    const rtt = rttMs === null ? "RTT unknown" : `RTT ${Math.round(rttMs)} ms`;
    const text = `Connection ${quality}: ${rtt}, ${lossPercent.toFixed(1)}% lost`;
    peer.quality.title = text;
    peer.quality.setAttribute("aria-label", text);
  }

  /** Whether `peerId` (null: us) is speaking now: a ring around the tile. */
  setSpeaking(peerId, speaking) {
    const tile = peerId === null ? this.localTile : this.peers.get(peerId)?.tile;
    tile?.classList.toggle("speaking", speaking);
  }

  /**
   * A shared screen on a tile of its own: `key` is the peer ID ("" for our own share),
   * `track` the screen's video track. Replaces that key's earlier share.
   */
  addShare(key, label, track) {
    this.removeShare(key);
    const video = element("video", { playsInline: true, muted: true, autoplay: true });
    video.srcObject = new MediaStream([track]);
    const tile = element("figure", { className: "tile share" }, [
      video,
      element("figcaption", {}, [
        element("span", { className: "name", textContent: label }),
        element("span", { className: "badge", textContent: "screen" }),
      ]),
    ]);
    tile.dataset.share = key;
    const anchor = key === "" ? this.localTile : this.peers.get(key)?.tile;
    if (anchor) anchor.after(tile);
    else this.tilesEl.append(tile);
    this.shares.set(key, { tile, video, track });
    video.play().catch(() => {});
    this.layout();
  }

  removeShare(key, track = null) {
    const share = this.shares.get(key);
    if (!share || (track && share.track !== track)) return;
    share.video.srcObject = null;
    share.tile.remove();
    this.shares.delete(key);
    this.layout();
  }

  setPeerState(peerId, state) {
    const peer = this.peers.get(peerId);
    if (!peer || !(state in STATE_TEXT)) return;
    for (const node of [peer.tile, peer.item]) node.dataset.state = state;
    peer.badge.textContent = STATE_TEXT[state];
    peer.stateEl.textContent = STATE_WORD[state];
  }

  setPeerStream(peerId, stream) {
    const peer = this.peers.get(peerId);
    if (!peer) return;
    const { video, showVideo } = peer;
    // Handler properties, not listeners: a track seen again replaces its handlers.
    for (const track of stream.getVideoTracks()) {
      track.onmute = showVideo;
      track.onunmute = showVideo;
      track.onended = showVideo;
    }
    if (video.srcObject !== stream) video.srcObject = stream;
    showVideo();
    this.#play(video);
  }

  removePeer(peerId) {
    const peer = this.peers.get(peerId);
    if (!peer) return;
    peer.video.srcObject = null;
    peer.tile.remove();
    this.removeShare(peerId);
    peer.item.remove();
    this.peers.delete(peerId);
    this.firstFrameAt.delete(peerId);
    this.#updateCount();
  }

  removeAllPeers() {
    for (const peerId of [...this.peers.keys()]) this.removePeer(peerId);
  }

  // -- sound --------------------------------------------------------------------
  #play(video) {
    video.muted = this.soundBlocked;
    video.play().catch((error) => {
      if (error.name !== "NotAllowedError") return; // e.g. interrupted by a new srcObject
      // The browser allows sound only after a click on the page: play muted until then.
      this.soundBlocked = true;
      video.muted = true;
      video.play().catch(() => {});
      this.notice("sound", "The browser held the sound back until you click.", {
        level: "info",
        action: { label: "Turn sound on", run: () => this.enableSound() },
      });
    });
  }

  enableSound() {
    this.soundBlocked = false;
    this.clearNotice("sound");
    for (const { video } of this.peers.values()) {
      video.muted = false;
      video.play().catch(() => {});
    }
  }

  #updateCount() {
    const count = this.peers.size;
    this.countEl.textContent = String(count);
    this.emptyEl.hidden = count > 0;
    this.tilesEl.dataset.count = String(count + 1);
    this.layout();
  }
}

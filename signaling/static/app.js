// The room page: wires the camera, the signaling connection, one PeerLink per remote peer
// and the view together. Loaded as an ES module; no build step, no third-party code.

import { ChatPanel, sha256Hex } from "./chat.js";
import { MAX_MESSAGE, messageSize } from "./chunks.js";
import { listDevices, openDevice, openLocalMedia, saveDevice } from "./media.js";
import { closeText, serverErrorText } from "./messages.js";
import { configUrl, inviteUrl, pageUrl, readParams, signalingUrl, takeToken } from "./params.js";
import { CHANNEL_LABEL, PeerLink, usableIceServers } from "./peer.js";
import { SignalingClient } from "./signaling.js";
import { SPEAKING_LEVEL, lossBetween, quality, readReport } from "./stats.js";
import { View } from "./ui.js";

/** Codes after which this page cannot be in the room under this name (or with this
 * invitation): the dialog says why instead of the close code's generic text. */
const REFUSALS = new Set([
  "id-taken",
  "room-full",
  "bad-resume-token",
  "auth-required",
  "token-expired",
  "invalid-token",
]);
/** A failed connection we offered is offered again (new RTCPeerConnection) this many times. */
const MAX_REOFFERS = 3;
/**
 * A working connection outlives its peer's `peer-left` by this long (as in the agent): a
 * peer that resumes on a new socket shows up as `peer-left` then `peer-joined` at once, and
 * a server shutting down sends `peer-left` for everyone just before closing with 1001.
 * Neither is the peer leaving, and its media still flows.
 */
const PEER_LEFT_GRACE_MS = 500;
/** How long the answering side of a connection the other side hung up on waits for that
 * side's new offer before offering itself (give or take half). */
const HUNG_UP_WAIT_MS = 2000;
/** How often each connection's stats are read (speaking rings); quality every QUALITY_TICKS. */
const STATS_INTERVAL_MS = 500;
const QUALITY_TICKS = 4;
/** Close code of a server going away (shutting down or restarting). */
const GOING_AWAY = 1001;
/** Messages received that `meshpeer.messages()` keeps (for the console and tests). */
const MAX_INBOX = 100;
/** Text kept as it is in that record; longer text is kept as its length and hash only. */
const MAX_INBOX_TEXT = 64 * 1024;

/**
 * The ICE servers /config.json names, [] when none. None by default: on a LAN or offline,
 * host candidates are all there is. A server with access tokens answers 401 without ours;
 * that, or any failure, only means "none from here": the peer-list may still bring some,
 * and a refused join explains itself.
 */
async function loadIceServers(token) {
  try {
    const headers = token ? { Authorization: `Bearer ${token}` } : {};
    const response = await fetch(configUrl(location.href), { cache: "no-store", headers });
    if (!response.ok) return [];
    const config = await response.json();
    return usableIceServers(config?.iceServers);
  } catch {
    return [];
  }
}

class RoomPage {
  constructor(params, view) {
    this.params = params;
    this.peerId = params.peerId;
    this.room = params.room;
    this.view = view;
    this.links = new Map(); // peerId -> PeerLink
    this.members = new Set(); // who the server says is in the room besides us
    this.graces = new Map(); // peerId -> timer closing its link after a `peer-left`
    this.reoffers = new Map(); // peerId -> attempts since the last working connection
    this.local = null;
    this.configIceServers = []; // from /config.json
    this.iceServers = []; // what new connections use: the latest peer-list's, or the above
    this.iceSource = "config.json";
    this.signaling = null;
    this.joined = false;
    this.left = false;
    this.leaving = new AbortController(); // stops asking for the camera once we left
    this.refusal = null; // plain-words reason the server refused us
    this.chat = new ChatPanel(document, (text) => this.#chatSend(text));
    this.inbox = []; // the last MAX_INBOX messages received, described
    this.dropped = 0; // messages we could not send
    this.share = null; // our shared screen: {track, stream}
    this.statsTimer = null;
    this.statsTicks = 0;
    this.lastFigures = new Map(); // PeerLink -> readReport() figures at the last quality tick
    this.qualities = {}; // peerId -> {quality, rttMs, lossPercent} (snapshot)
  }

  async start() {
    const { view } = this;
    view.setIdentity(this.peerId, this.room);
    this.#showInvite(); // before joining too: this page's own address may carry our token
    // Leave works from the first moment: the camera prompt waits as long as the person does.
    document.getElementById("leave").addEventListener("click", () => this.leave());
    // The people list and chat are below the videos, which fill the window.
    document.getElementById("show-side").addEventListener("click", () => {
      document.getElementById("sidebar").scrollIntoView({ behavior: "smooth", block: "start" });
    });
    view.setStatus("starting", this.params.watch ? "Joining to watch…" : "Starting camera…");
    const media = openLocalMedia({ watch: this.params.watch, signal: this.leaving.signal }).then(
      (local) => {
        if (this.left) local.stop(); // granted after we left: no camera light on a left page
        return local;
      },
    );
    const [local, iceServers] = await Promise.all([media, loadIceServers(this.params.token)]);
    if (this.left) return;
    this.local = local;
    this.configIceServers = iceServers;
    this.iceServers = iceServers;
    view.showLocal(local);
    if (local.problem) view.notice("camera", local.problem, { level: "warning" });
    this.#setupControls();
    this.statsTimer = setInterval(() => this.#readStats(), STATS_INTERVAL_MS);

    const signaling = new SignalingClient(signalingUrl(location.href, this.room), {
      peerId: this.peerId,
      room: this.room,
      token: this.params.token,
    });
    this.signaling = signaling;
    signaling.addEventListener("joined", (e) => this.#joined(e.detail));
    signaling.addEventListener("message", (e) => this.#message(e.detail));
    signaling.addEventListener("server-error", (e) => this.#serverError(e.detail));
    signaling.addEventListener("disconnected", (e) => this.#disconnected(e.detail));
    view.setStatus("joining", "Joining…");
    signaling.connect();
  }

  leave() {
    if (this.left) return;
    this.left = true;
    this.leaving.abort();
    clearInterval(this.statsTimer);
    this.stopShare();
    this.signaling?.close();
    this.#closeAllLinks();
    this.local?.stop();
    this.view.stopLocal("you left");
    this.view.setStatus("left", "You left the room");
    this.view.clearNotice("connection");
    this.#askToJoin("You left the room.", "Join again");
  }

  // -- signaling events -----------------------------------------------------------
  #joined({ peers, room, resumed, iceServers }) {
    this.joined = true;
    this.room = room;
    // The server's per-peer list (time-limited TURN credentials) replaces /config.json's for
    // every connection made from now on; each rejoin brings fresh credentials. Connections
    // kept across a rejoin keep theirs, as with `ice-servers`.
    this.iceSource = iceServers ? "peer-list" : "config.json";
    this.iceServers = iceServers ? usableIceServers(iceServers) : this.configIceServers;
    this.view.setIdentity(this.peerId, room);
    this.#showInvite();
    this.view.setStatus("joined", "In the room");
    this.view.clearNotice("connection");
    const listed = new Set(peers.filter((p) => typeof p === "string" && p !== this.peerId));
    this.members = listed;
    // As in the agent, a lost signaling socket does not touch the media: a connection that
    // is up stays (same RTCPeerConnection, no offer), whether its peer is listed or not yet
    // back (after a server restart the others rejoin one by one). Anything else starts
    // afresh: a negotiation cut by the lost socket may have lost its answer with it.
    for (const [peerId, link] of [...this.links]) {
      if (link.state !== "connected") this.#closeLink(peerId);
    }
    for (const peerId of [...this.view.peers.keys()]) {
      if (!listed.has(peerId) && !this.links.has(peerId)) this.view.removePeer(peerId);
    }
    if (resumed) console.info("meshpeer: rejoined; peers:", [...listed]);
    for (const peerId of listed) {
      this.#cancelGrace(peerId);
      if (this.links.has(peerId)) continue; // up, kept
      this.#link(peerId).startOffer(); // the newcomer offers to everyone it has no link with
    }
  }

  #message(message) {
    const from = typeof message.from === "string" ? message.from : null;
    switch (message.type) {
      case "peer-joined":
        if (typeof message.peerId !== "string" || message.peerId === this.peerId) return;
        this.#peerJoined(message.peerId);
        break;
      case "peer-left":
        if (typeof message.peerId !== "string") return;
        this.#peerLeft(message.peerId);
        break;
      case "offer":
      case "answer":
        if (!from || typeof message.sdp !== "string") return;
        if (message.type === "offer") this.members.add(from); // only a peer in the room offers
        if (message.type === "answer" && !this.links.has(from)) return;
        if (message.type === "offer" && this.links.get(from)?.isFromNewConnection(message.sdp)) {
          // The peer started over (its connection failed, or it restarted): so do we.
          this.#dropLink(from);
        }
        this.#link(from).receiveDescription(message.type, message.sdp);
        break;
      case "candidate":
        if (from) this.links.get(from)?.receiveCandidate(message.candidate);
        break;
      case "ice-servers":
        // Fresh TURN credentials, sent before the peer-list's expire: for the connections
        // made from now on (someone joining late in a long meeting). Live ones keep theirs.
        if (Array.isArray(message.iceServers)) {
          this.iceSource = "ice-servers";
          this.iceServers = usableIceServers(message.iceServers);
        }
        break;
      default:
        break; // other applications' messages (chat, ...): not ours
    }
  }

  #serverError({ code, message }) {
    const text = serverErrorText(code, message, { peerId: this.peerId, room: this.room });
    if (!text) return;
    if (REFUSALS.has(code)) {
      this.refusal = text;
    } else {
      this.view.notice(`server-${code}`, text);
    }
  }

  #disconnected({ code, final, everJoined, nameCheck }) {
    this.joined = false;
    if (this.left) return;
    if (code === GOING_AWAY) {
      // The `peer-left`s just before were the server shutting down, not the peers leaving:
      // their media still flows, and they rejoin the restarted server like us.
      for (const peerId of [...this.graces.keys()]) this.#cancelGrace(peerId);
    }
    if (nameCheck) {
      this.view.setStatus("joining", "Checking the name…");
      this.view.notice(
        "connection",
        `The name “${this.peerId}” is in use right now; asking again in a moment in case it was this page's own earlier visit…`,
        { level: "info" },
      );
      return;
    }
    if (final) {
      this.#closeAllLinks();
      this.local?.stop(); // no camera light while not in a room
      this.view.stopLocal("not in the room");
      this.view.setStatus("refused", "Not in the room");
      const reason = this.refusal ?? closeText(code);
      this.view.notice("connection", reason);
      this.#askToJoin(reason, "Join");
      return;
    }
    const text = everJoined ? closeText(code) : "Cannot reach the meshpeer server. Retrying…";
    this.view.setStatus("reconnecting", "Reconnecting…");
    this.view.notice("connection", text, { level: "warning" });
  }

  /** With a token, the room's address alone would only meet "needs an invitation link",
   * and ours must not be passed on: each person needs their own invitation. */
  #showInvite() {
    this.view.setInvite(this.params.token ? null : inviteUrl(location.href, this.params.room));
  }

  // -- membership -----------------------------------------------------------------
  /** A peer arrived, or came back. If our connection to it is up, it only resumed its
   * signaling: keep it. Anything short of that is dropped, and the newcomer offers. */
  #peerJoined(peerId) {
    this.members.add(peerId);
    this.#cancelGrace(peerId);
    const link = this.links.get(peerId);
    if (link && link.state !== "connected") this.#closeLink(peerId); // from an earlier visit
    this.view.addPeer(peerId); // it will offer to us
  }

  /** A peer left: its connection goes, a working one only after PEER_LEFT_GRACE_MS. */
  #peerLeft(peerId) {
    this.members.delete(peerId);
    if (this.links.get(peerId)?.state !== "connected") {
      this.#closeLink(peerId);
      return;
    }
    this.#cancelGrace(peerId);
    this.graces.set(
      peerId,
      setTimeout(() => {
        this.graces.delete(peerId);
        if (!this.members.has(peerId)) this.#closeLink(peerId);
      }, PEER_LEFT_GRACE_MS),
    );
  }

  #cancelGrace(peerId) {
    clearTimeout(this.graces.get(peerId));
    this.graces.delete(peerId);
  }

  // -- peer links ----------------------------------------------------------------
  #link(peerId) {
    let link = this.links.get(peerId);
    if (link) return link;
    link = new PeerLink({
      selfId: this.peerId,
      peerId,
      iceServers: this.iceServers,
      local: this.local,
      // `from` as the reference client writes it (our server would add it anyway).
      send: (msg) => this.signaling.send({ type: msg.type, from: this.peerId, ...msg }),
    });
    this.links.set(peerId, link);
    this.view.addPeer(peerId);
    this.view.setPeerState(peerId, link.state);
    link.addEventListener("state", (e) => this.#linkState(peerId, link, e.detail.state));
    link.addEventListener("stream", (e) => this.#remoteTrack(peerId, e.detail));
    link.addEventListener("removed", (e) => this.view.removeShare(peerId, e.detail.track));
    if (this.share) link.share(this.share.track, this.share.stream);
    link.addEventListener("message", (e) => this.#received(peerId, e.detail));
    link.addEventListener("dropped", (e) => this.#notDelivered(peerId, e.detail));
    return link;
  }

  /** Start a new connection to `peerId`, offered by us (also the "Retry" button). */
  restartLink(peerId) {
    if (!this.joined || !this.links.has(peerId)) return;
    this.#dropLink(peerId);
    this.#link(peerId).startOffer();
  }

  #linkState(peerId, link, state) {
    if (this.links.get(peerId) !== link) return; // a connection we already replaced
    this.view.setPeerState(peerId, state);
    if (state === "connected") {
      this.reoffers.delete(peerId);
      return;
    }
    if (state === "failed" && this.joined && !this.members.has(peerId)) {
      this.#closeLink(peerId); // it left (or hung up after leaving): nobody to reconnect to
      return;
    }
    // As in the agent: the side that offered a failed connection offers a new one; the
    // other side waits for it (its new certificate tells us it is a new connection). One
    // exception: a connection the other side hung up on while we were away (we kept it
    // across our rejoin, it did not) has nobody left to offer, as it waits for us, the
    // newcomer. So we offer too, unless its new offer comes first.
    if (state !== "failed") return;
    const offerer = link.role === "offerer";
    if (!offerer && !link.hungUp) return;
    const attempt = this.reoffers.get(peerId) ?? 0;
    if (attempt >= MAX_REOFFERS) return;
    this.reoffers.set(peerId, attempt + 1);
    const wait = offerer ? 1000 * 2 ** attempt : HUNG_UP_WAIT_MS;
    const delay = wait * (0.5 + Math.random());
    setTimeout(() => {
      if (this.links.get(peerId) === link) this.restartLink(peerId);
    }, delay);
  }

  /** Close the connection to `peerId` but keep the person on screen (a new one follows). */
  #dropLink(peerId) {
    this.links.get(peerId)?.close();
    this.links.delete(peerId);
  }

  #closeLink(peerId) {
    this.#cancelGrace(peerId);
    this.#dropLink(peerId);
    this.reoffers.delete(peerId);
    this.view.removePeer(peerId);
  }

  #closeAllLinks() {
    for (const peerId of [...this.links.keys()]) this.#closeLink(peerId);
    this.view.removeAllPeers();
  }

  // -- data channel and chat -----------------------------------------------------------
  /**
   * Send `data` (text or bytes) on the `meshpeer` channel to `to`, or to everyone we have a
   * connection with, and show it in the chat. Answers {peerId: whether it all went out}.
   */
  async sendData(data, to = null) {
    const size = messageSize(data); // throws for what is neither text nor bytes
    if (size > MAX_MESSAGE) {
      throw new RangeError(`a message of ${size} bytes is over the ${MAX_MESSAGE}-byte limit`);
    }
    const targets = [...this.links].filter(([peerId]) => to === null || peerId === to);
    if (!targets.length) {
      const nobody = to === null ? "Nobody else is here yet" : `${to} is not here`;
      this.chat.notice(`${nobody}: not sent.`);
      return {};
    }
    this.chat.add(to === null ? "you" : `you → ${to}`, data, { own: true });
    const sent = await Promise.all(targets.map(([, link]) => link.sendData(data)));
    return Object.fromEntries(targets.map(([peerId], i) => [peerId, sent[i]]));
  }

  #chatSend(text) {
    const anyone = this.links.size > 0;
    this.sendData(text).catch((error) => this.chat.notice(`Not sent: ${error.message}.`));
    return anyone;
  }

  #received(peerId, { data, label }) {
    this.chat.add(peerId, data, { label: label === CHANNEL_LABEL ? null : label });
    const text = typeof data === "string" ? data : null;
    const bytes = text === null ? new Uint8Array(data) : new TextEncoder().encode(text);
    const entry = {
      from: peerId,
      channel: label,
      text: text !== null && text.length <= MAX_INBOX_TEXT ? text : null,
      binary: text === null,
      bytes: bytes.length,
      sha256: null, // filled in a moment
    };
    this.inbox.push(entry);
    if (this.inbox.length > MAX_INBOX) this.inbox.shift();
    sha256Hex(bytes).then((hex) => {
      entry.sha256 = hex;
    });
  }

  #notDelivered(peerId, { count, reason }) {
    this.dropped += count;
    const what = count === 1 ? "1 message" : `${count} messages`;
    this.chat.notice(`Not delivered to ${peerId}: ${what} (${reason}).`);
  }

  /** A remote track: the first video track is the person's camera, any other a screen. */
  #remoteTrack(peerId, { stream, track }) {
    this.view.setPeerStream(peerId, stream);
    if (track.kind === "video" && stream.getVideoTracks().indexOf(track) > 0) {
      this.view.addShare(peerId, `${peerId}'s screen`, track);
      track.addEventListener("ended", () => this.view.removeShare(peerId, track));
    }
  }

  // -- screen share ----------------------------------------------------------------
  /** Share a screen (a window, a tab) with everyone: one more video track on every link. */
  async startShare() {
    if (this.share || this.left) return;
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
    } catch (error) {
      if (error.name !== "NotAllowedError") {
        this.view.notice("share", `The screen could not be shared: ${error.message}`, {
          level: "warning",
        });
      }
      return; // NotAllowedError: the person cancelled the browser's picker
    }
    const track = stream.getVideoTracks()[0];
    if (this.left || !track) {
      for (const t of stream.getTracks()) t.stop();
      return;
    }
    this.share = { track, stream };
    track.addEventListener("ended", () => this.stopShare()); // the browser's "Stop sharing"
    for (const link of this.links.values()) link.share(track, stream);
    this.view.addShare("", "Your screen", track);
    this.#shareButton(true);
  }

  stopShare() {
    if (!this.share) return;
    const { track } = this.share;
    this.share = null;
    for (const link of this.links.values()) link.unshare();
    track.stop();
    this.view.removeShare("");
    this.#shareButton(false);
  }

  #shareButton(sharing) {
    const button = document.getElementById("share-screen");
    button.setAttribute("aria-pressed", String(sharing));
    button.textContent = sharing ? "Stop sharing" : "Share screen";
  }

  // -- camera and microphone choice -------------------------------------------------
  async #fillPicker(kind) {
    const select = document.getElementById(kind === "video" ? "camera-select" : "mic-select");
    const current = this.local?.track(kind)?.getSettings().deviceId ?? null;
    let devices = [];
    try {
      devices = await listDevices(kind);
    } catch {
      devices = [];
    }
    select.replaceChildren(
      ...devices.map((d) => {
        const option = document.createElement("option");
        option.value = d.deviceId;
        option.textContent = d.label;
        option.selected = d.deviceId === current;
        return option;
      }),
    );
    // Switching replaces a track we send; a kind we never sent would need a new offer.
    select.disabled = this.left || !current || devices.length === 0;
  }

  /** Send `deviceId`'s track instead of this kind's current one, on every link, in place. */
  async switchDevice(kind, deviceId) {
    const old = this.local?.track(kind);
    if (!old || this.left || old.getSettings().deviceId === deviceId) return;
    let track;
    try {
      track = await openDevice(kind, deviceId);
    } catch {
      // Some devices open only once: let the old one go, then try again.
      old.stop();
      try {
        track = await openDevice(kind, deviceId);
      } catch (error) {
        this.view.notice("device", `That ${kind === "video" ? "camera" : "microphone"} could not be started: ${error.message}`);
        return;
      }
    }
    await this.useTrack(kind, track);
    saveDevice(kind, deviceId);
    this.view.clearNotice("device");
    await this.#fillPicker(kind);
  }

  /** Send `track` instead of this kind's current one (stopped), on every link, in place. */
  async useTrack(kind, track) {
    const old = this.local?.track(kind);
    if (!old) return;
    track.enabled = old.enabled; // a muted microphone stays muted
    this.local.replace(kind, track);
    await Promise.all([...this.links.values()].map((link) => link.replaceTrack(kind, track)));
    old.stop();
    if (kind === "video") this.view.showLocal(this.local);
  }

  // -- stats: speaking rings and connection quality -----------------------------------
  async #readStats() {
    const tick = this.statsTicks++;
    let localLevel = 0;
    for (const [peerId, link] of this.links) {
      if (link.state !== "connected") continue;
      let figures;
      try {
        figures = readReport(await link.pc.getStats());
      } catch {
        continue; // closed meanwhile
      }
      localLevel = Math.max(localLevel, figures.localLevel);
      this.view.setSpeaking(peerId, figures.remoteLevel > SPEAKING_LEVEL);
      if (tick % QUALITY_TICKS !== 0) continue;
      const lossPercent = lossBetween(this.lastFigures.get(link), figures);
      this.lastFigures.set(link, figures);
      const shown = { quality: quality(figures.rttMs, lossPercent), rttMs: figures.rttMs, lossPercent };
      this.qualities[peerId] = shown;
      this.view.setPeerQuality(peerId, shown);
    }
    const micOn = Boolean(this.local?.audio?.enabled);
    this.view.setSpeaking(null, micOn && localLevel > SPEAKING_LEVEL);
  }

  // -- controls --------------------------------------------------------------------
  #setupControls() {
    const doc = document;
    const bind = (id, kind, onText, offText) => {
      const button = doc.getElementById(id);
      button.disabled = !this.local.track(kind);
      if (button.disabled) {
        button.textContent = kind === "video" ? "No camera" : "No mic";
        return;
      }
      button.addEventListener("click", () => {
        const track = this.local.track(kind); // the one sent now (a switch replaces it)
        if (!track) return;
        track.enabled = !track.enabled;
        const muted = !track.enabled;
        button.setAttribute("aria-pressed", String(muted));
        button.textContent = muted ? onText : offText;
        this.view.setLocalMuted(kind, muted);
      });
    };
    bind("toggle-camera", "video", "Start camera", "Stop camera");
    bind("toggle-mic", "audio", "Unmute mic", "Mute mic");
    const share = doc.getElementById("share-screen");
    share.hidden = !navigator.mediaDevices?.getDisplayMedia; // phones cannot share a screen
    share.disabled = share.hidden || this.params.watch;
    share.addEventListener("click", () => (this.share ? this.stopShare() : this.startShare()));
    for (const kind of ["video", "audio"]) {
      const select = doc.getElementById(kind === "video" ? "camera-select" : "mic-select");
      select.addEventListener("change", () => this.switchDevice(kind, select.value));
      this.#fillPicker(kind);
    }
    navigator.mediaDevices?.addEventListener?.("devicechange", () => {
      this.#fillPicker("video");
      this.#fillPicker("audio");
    });    doc.addEventListener("click", () => {
      if (this.view.soundBlocked) this.view.enableSound();
    });
  }

  #askToJoin(reason, buttonText) {
    const dialog = document.getElementById("join-dialog");
    const form = document.getElementById("join-form");
    document.getElementById("join-title").textContent = this.left ? "Left the room" : "Could not join";
    document.getElementById("join-reason").textContent = reason;
    document.getElementById("join-id").value = this.peerId;
    document.getElementById("join-room").value = this.room ?? "";
    form.querySelector("button[type=submit]").textContent = buttonText;
    form.onsubmit = (event) => {
      event.preventDefault();
      const peerId = document.getElementById("join-id").value.trim();
      const room = document.getElementById("join-room").value.trim();
      const sameRoom = (room || "default") === (this.room ?? "default");
      if (peerId === this.peerId && sameRoom) {
        location.reload(); // this page's own address, with the invitation this tab keeps for it
      } else {
        location.assign(pageUrl(location.href, { room, peerId })); // an invitation cannot follow
      }
    };
    for (const id of ["leave", "toggle-camera", "toggle-mic", "share-screen", "camera-select", "mic-select"]) {
      document.getElementById(id).disabled = true;
    }
    this.chat.setEnabled(false);
    if (!dialog.open) dialog.showModal();
  }

  // -- introspection (browser console, tests, benchmarks) -------------------------------
  snapshot() {
    const peers = {};
    const times = {};
    const channels = {};
    const joining = {};
    for (const [peerId, link] of this.links) {
      peers[peerId] = link.state;
      times[peerId] = link.times;
      channels[peerId] = link.data.state;
      joining[peerId] = link.data.joining;
    }
    return {
      peerId: this.peerId,
      room: this.room,
      joined: this.joined,
      peers,
      sending: { audio: Boolean(this.local?.audio), video: Boolean(this.local?.video) },
      sharing: Boolean(this.share),
      devices: {
        video: this.local?.video?.getSettings().deviceId ?? null,
        audio: this.local?.audio?.getSettings().deviceId ?? null,
      },
      quality: this.qualities,
      iceServers: this.iceServers,
      iceSource: this.iceSource,
      joinSentAt: this.signaling?.joinSentAt ?? null,
      firstFrameAt: Object.fromEntries(this.view.firstFrameAt),
      times,
      // The `meshpeer` channel per peer: readyState, bytes of a message being joined.
      data: { channels, joining, dropped: this.dropped },
    };
  }
}

const view = new View(document);
const invitation = takeToken(window); // read once, and out of the address bar
const page = new RoomPage(readParams(location.search, invitation), view);
view.onRetry = (peerId) => page.restartLink(peerId);
/** For the browser console and automated checks: `meshpeer.snapshot()`. */
window.meshpeer = {
  page,
  snapshot: () => page.snapshot(),
  inbound: (peerId, kind = "video") => page.links.get(peerId)?.inbound(kind) ?? null,
  leave: () => page.leave(),
  /** Text or bytes to `to` (everyone when null); answers {peerId: sent}. */
  send: (data, to = null) => page.sendData(data, to),
  /** `length` random bytes to `to` (everyone when null); answers {sha256, sent}. */
  sendBytes: async (length, to = null) => {
    const bytes = new Uint8Array(length);
    for (let at = 0; at < length; at += 65536) {
      crypto.getRandomValues(bytes.subarray(at, at + 65536)); // at most 64 KiB a call
    }
    const sha256 = await sha256Hex(bytes);
    return { sha256, sent: await page.sendData(bytes, to) };
  },
  /** The messages received, newest last: {from, channel, text, binary, bytes, sha256}. */
  messages: () => page.inbox,
};
addEventListener("pagehide", () => page.signaling?.close());
page.start().catch((error) => {
  console.error(error);
  view.setStatus("refused", "Something went wrong");
  view.notice("crash", `The page stopped because of an unexpected error: ${error.message}`);
});

// One RTCPeerConnection to one remote peer, negotiated with the "perfect negotiation" pattern:
// either side may (re)offer at any time; on glare the peer whose ID sorts lower is polite
// and rolls its own offer back.

import { MeshChannel } from "./channel.js";

/** The label of the data channel meshpeer peers talk on (PROTOCOL.md section 16). */
export const CHANNEL_LABEL = "meshpeer";

const KINDS = ["audio", "video"];
/**
 * Candidates kept per link while the remote description is missing (as in the agent). A
 * browser trickles a handful; only a broken or hostile peer sends more, and those must not
 * grow the page's memory without end. The first ones are kept: host candidates come first.
 */
export const MAX_PENDING_CANDIDATES = 64;

function now() {
  return performance.timeOrigin + performance.now();
}

/**
 * The DTLS certificate fingerprint of an SDP. Each RTCPeerConnection has its own
 * certificate, so a new fingerprint means the other side started a new connection
 * (after a failure, or a restart) rather than renegotiating this one.
 */
export function fingerprint(sdp) {
  const match = /^a=fingerprint:(\S+ \S+)/m.exec(sdp ?? "");
  return match ? match[1].toLowerCase() : null;
}

/**
 * Whether two SDPs name the same certificate: they share a fingerprint. aiortc lists three
 * (sha-256, sha-384, sha-512) and Chromium keeps only one of them in remoteDescription, so
 * comparing the first of each would take an agent's renegotiation for a new connection.
 */
export function sameCertificate(a, b) {
  const all = (sdp) =>
    [...(sdp ?? "").matchAll(/^a=fingerprint:(\S+ \S+)/gm)].map((m) => m[1].toLowerCase());
  const known = new Set(all(a));
  return all(b).some((value) => known.has(value));
}

/**
 * The entries of `servers` (RTCIceServer dictionaries from the server) that this browser
 * accepts. One bad entry (a TURN URL without credentials, an unknown scheme) would make every
 * RTCPeerConnection constructor throw, so each is tried alone in a throwaway connection
 * (nothing is gathered before an offer) and dropped with a console warning if refused.
 */
export function usableIceServers(servers) {
  if (!Array.isArray(servers)) return [];
  return servers.filter((server) => {
    try {
      new RTCPeerConnection({ iceServers: [server] }).close();
      return true;
    } catch (error) {
      console.warn("meshpeer: ignoring an ICE server this browser refuses", server, error);
      return false;
    }
  });
}

/** What the page shows for an RTCPeerConnection.connectionState. */
function linkState(connectionState) {
  switch (connectionState) {
    case "connected":
      return "connected";
    case "failed":
      return "failed";
    case "disconnected":
      return "disconnected";
    case "closed":
      return "closed";
    default:
      return "connecting";
  }
}

/**
 * Events (CustomEvent): "state" {state}, "stream" {stream} when a remote track arrives,
 * "message" {data, label} for each message received on any data channel (a string or an
 * ArrayBuffer), "dropped" {count, reason} for messages we could not send.
 */
export class PeerLink extends EventTarget {
  /**
   * @param {{selfId: string, peerId: string, iceServers: RTCIceServer[],
   *          local: import("./media.js").LocalMedia, send: (msg: object) => void}} options
   */
  constructor({ selfId, peerId, iceServers, local, send }) {
    super();
    this.peerId = peerId;
    this.polite = selfId < peerId;
    this.local = local;
    this.send = send;
    this.state = "connecting";
    this.stream = new MediaStream();
    this.mediaAttached = false;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.settingRemoteAnswer = false;
    this.pendingCandidates = [];
    this.droppedCandidates = 0; // beyond MAX_PENDING_CANDIDATES
    this.closed = false;
    /** A shared screen to send ({track, stream}), and its sender once added. */
    this.shared = null;
    this.shareSender = null;
    /** The other side closed this connection (its DTLS close_notify reached us). */
    this.hungUp = false;
    this.watchedTransport = null;
    this.role = null; // "offerer" or "answerer": who started this connection
    /** Epoch ms of each step (created, offer, answer, connected), to see where time goes. */
    this.times = { created: now() };
    /** The `meshpeer` channel: framing, flow control, and a queue until it opens. */
    this.data = new MeshChannel({
      peerId,
      onMessage: (data) => this.#emit("message", { data, label: CHANNEL_LABEL }),
      onDropped: (detail) => this.#emit("dropped", detail),
    });

    const pc = new RTCPeerConnection({ iceServers });
    this.pc = pc;
    pc.addEventListener("datachannel", ({ channel }) => this.#acceptChannel(channel));
    pc.addEventListener("icecandidate", ({ candidate }) => {
      // The browser trickles: one message per candidate, then null at the end.
      this.send({ type: "candidate", to: peerId, candidate: candidate ? candidate.toJSON() : null });
    });
    pc.addEventListener("negotiationneeded", () => this.#offer());
    pc.addEventListener("track", ({ track, streams }) => {
      if (!this.stream.getTracks().includes(track)) this.stream.addTrack(track);
      // The other side removed it (a shared screen that stopped): its stream says so.
      streams[0]?.addEventListener("removetrack", (event) => {
        if (event.track !== track) return;
        this.stream.removeTrack(track);
        this.#emit("removed", { track });
      });
      this.dispatchEvent(new CustomEvent("stream", { detail: { stream: this.stream, track } }));
    });
    pc.addEventListener("connectionstatechange", () => {
      if (this.hungUp) return; // stays failed: ICE only notices 5 to 15 s later
      const state = linkState(pc.connectionState);
      if (state === "connected") {
        this.times.connected ??= now();
        this.#watchHangUp();
      }
      this.#setState(state);
      if (state === "connected") this.#sendShare();
    });
  }

  /** As the newcomer: attach media, which fires negotiationneeded and sends the offer. */
  startOffer() {
    this.role ??= "offerer";
    // Before the media, in the same task: the first offer carries the channel (no extra
    // round trip once connected).
    if (this.data.state === "none") this.data.attach(this.pc.createDataChannel(CHANNEL_LABEL));
    this.#attachMedia(true);
  }

  /** Send a string or bytes on the `meshpeer` channel: true once all of it is in the channel. */
  sendData(data) {
    return this.data.send(data);
  }

  /** True when `sdp` comes from another RTCPeerConnection than the one we talk to. */
  isFromNewConnection(sdp) {
    const current = this.pc.remoteDescription?.sdp;
    return Boolean(current) && !sameCertificate(current, sdp);
  }

  /** An `offer` or `answer` from this peer. */
  async receiveDescription(type, sdp) {
    if (this.closed) return;
    const pc = this.pc;
    if (type === "offer") this.role ??= "answerer";
    const readyForOffer =
      !this.makingOffer && (pc.signalingState === "stable" || this.settingRemoteAnswer);
    const collision = type === "offer" && !readyForOffer;
    this.ignoreOffer = !this.polite && collision;
    if (this.ignoreOffer) {
      console.debug(`meshpeer: ignoring ${this.peerId}'s offer (glare, we are impolite)`);
      return;
    }
    try {
      this.settingRemoteAnswer = type === "answer";
      await pc.setRemoteDescription({ type, sdp }); // rolls our own offer back if polite
      this.settingRemoteAnswer = false;
      if (type === "offer") {
        this.#attachMedia(false); // reuses the offer's transceivers: no second round trip
        await pc.setLocalDescription();
        this.send({ type: "answer", to: this.peerId, sdp: pc.localDescription.sdp });
        this.times.answer ??= now();
      }
    } catch (error) {
      this.settingRemoteAnswer = false;
      if (!this.closed) console.error(`meshpeer: negotiation with ${this.peerId} failed`, error);
      return;
    }
    const queued = this.pendingCandidates.splice(0);
    for (const candidate of queued) await this.#addCandidate(candidate);
  }

  /** A trickled `candidate` from this peer (null or "" = end of candidates). */
  async receiveCandidate(candidate) {
    if (this.closed || !candidate || !candidate.candidate) return;
    if (!this.pc.remoteDescription) {
      if (this.pendingCandidates.length < MAX_PENDING_CANDIDATES) {
        this.pendingCandidates.push(candidate); // added once the description is set
      } else if (this.droppedCandidates++ === 0) {
        console.warn(
          `meshpeer: more than ${MAX_PENDING_CANDIDATES} candidates from ${this.peerId} before its description; ignoring the rest`,
        );
      }
      return;
    }
    await this.#addCandidate(candidate);
  }

  /**
   * Send a shared screen as one more video track: added by renegotiation in place (our
   * negotiationneeded offers it) once the connection is up, so never in the middle of the
   * first offer and answer.
   */
  share(track, stream) {
    this.unshare();
    this.shared = { track, stream };
    this.#sendShare();
  }

  /** Stop sending the shared screen (renegotiated in place too). */
  unshare() {
    this.shared = null;
    if (!this.shareSender || this.closed) return;
    this.pc.removeTrack(this.shareSender);
    this.shareSender = null;
  }

  /**
   * Another camera's or microphone's track in place of the one we send: same sender, no
   * renegotiation, no new connection (the shared screen's sender is left alone).
   */
  async replaceTrack(kind, track) {
    if (this.closed) return;
    const senders = this.pc
      .getSenders()
      .filter((s) => s !== this.shareSender && s.track?.kind === kind);
    await Promise.all(senders.map((sender) => sender.replaceTrack(track)));
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.data.close(); // before pc.close(), which closes the channels without an event
    this.pc.close();
    for (const track of this.stream.getTracks()) track.stop();
    this.#setState("closed");
  }

  /** Inbound RTP totals for one kind, from getStats (for the page's own checks and tests). */
  async inbound(kind) {
    const totals = {
      framesDecoded: 0,
      frameWidth: 0,
      bytesReceived: 0,
      packetsReceived: 0,
      totalAudioEnergy: 0,
    };
    if (this.closed) return totals;
    const report = await this.pc.getStats();
    report.forEach((stat) => {
      if (stat.type !== "inbound-rtp" || stat.kind !== kind) return;
      totals.framesDecoded += stat.framesDecoded ?? 0;
      totals.frameWidth = Math.max(totals.frameWidth, stat.frameWidth ?? 0);
      totals.bytesReceived += stat.bytesReceived ?? 0;
      totals.packetsReceived += stat.packetsReceived ?? 0;
      totals.totalAudioEnergy += stat.totalAudioEnergy ?? 0;
    });
    return totals;
  }

  async #offer() {
    if (this.closed) return;
    try {
      this.makingOffer = true;
      await this.pc.setLocalDescription();
      if (this.pc.localDescription?.type === "offer") {
        this.send({ type: "offer", to: this.peerId, sdp: this.pc.localDescription.sdp });
        this.times.offer ??= now();
      }
    } catch (error) {
      if (!this.closed) console.error(`meshpeer: could not offer to ${this.peerId}`, error);
    } finally {
      this.makingOffer = false;
    }
  }

  /** Ours if labelled `meshpeer`; any other is passed on as it is (no framing). */
  #acceptChannel(channel) {
    if (this.closed) return;
    if (channel.label === CHANNEL_LABEL) {
      this.data.attach(channel);
      return;
    }
    channel.binaryType = "arraybuffer";
    channel.addEventListener("message", ({ data }) =>
      this.#emit("message", { data, label: channel.label }),
    );
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  async #addCandidate(candidate) {
    try {
      await this.pc.addIceCandidate(candidate);
    } catch (error) {
      if (!this.ignoreOffer && !this.closed) {
        console.warn(`meshpeer: bad candidate from ${this.peerId}`, error);
      }
    }
  }

  /**
   * Send our tracks. As the offerer, also ask to receive the kinds we do not send (a viewer
   * page offers recvonly); as the answerer, fill the transceivers the offer made.
   */
  #attachMedia(asOfferer) {
    if (this.mediaAttached) return;
    this.mediaAttached = true;
    const transceivers = this.pc.getTransceivers();
    for (const kind of KINDS) {
      const track = this.local.track(kind);
      const offered = transceivers.find(
        (t) => t.receiver.track.kind === kind && !t.sender.track && !t.stopped,
      );
      if (track && (asOfferer || offered)) {
        this.pc.addTrack(track, this.local.stream); // takes over `offered` if there is one
      } else if (!track && asOfferer) {
        this.pc.addTransceiver(kind, { direction: "recvonly" });
      }
      // As the answerer, a kind the offer has no room for is not sent: adding it would need
      // a second offer, and peers that do not renegotiate (bots, the reference client)
      // would break on it.
    }
  }

  /**
   * A peer that closes its connection (it left, its grace ran out while we were away, or it
   * replaced the connection) sends a DTLS close_notify: the transport closes at once, while
   * connectionState only turns "disconnected" ~5 s and "failed" ~15 s later. Reporting
   * "failed" at once lets the page offer again (or forget a peer that left) without that
   * wait, and a connection kept across our rejoin cannot pass for working when the other
   * side closed its half meanwhile.
   */
  #watchHangUp() {
    const transport = this.pc.getReceivers().find((r) => r.transport)?.transport;
    if (!transport || this.watchedTransport === transport) return;
    this.watchedTransport = transport;
    transport.addEventListener("statechange", () => {
      if (transport.state !== "closed" || this.closed || this.hungUp) return;
      if (this.watchedTransport !== transport) return;
      this.hungUp = true;
      console.info(`meshpeer: ${this.peerId} closed its connection`);
      this.#setState("failed");
    });
  }

  #sendShare() {
    if (!this.shared || this.shareSender || this.closed || this.state !== "connected") return;
    this.shareSender = this.pc.addTrack(this.shared.track, this.shared.stream);
  }

  #setState(state) {
    if (state === this.state || (this.closed && state !== "closed")) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state } }));
  }
}

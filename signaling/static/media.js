// The local camera and microphone: asked for once, shared by every peer connection, and
// switched in place (another device's track replaces the old one on every sender).

import { mediaErrorText } from "./messages.js";

/**
 * The tracks this page sends. A missing kind is null: the page then only receives that kind.
 */
export class LocalMedia {
  constructor(stream, problem) {
    this.stream = stream;
    this.problem = problem; // plain-words text, or null when everything was granted
  }

  get audio() {
    return this.stream.getAudioTracks()[0] ?? null;
  }

  get video() {
    return this.stream.getVideoTracks()[0] ?? null;
  }

  track(kind) {
    return kind === "audio" ? this.audio : this.video;
  }

  /** Put `track` in place of this kind's track (which the caller stops); answers the old one. */
  replace(kind, track) {
    const old = this.track(kind);
    if (old) this.stream.removeTrack(old);
    this.stream.addTrack(track);
    return old;
  }

  stop() {
    for (const track of this.stream.getTracks()) track.stop();
  }
}

/** Where the chosen camera and microphone are remembered (this browser, this server). */
const DEVICES_KEY = "meshpeer.devices";
const DEVICE_KINDS = { video: "videoinput", audio: "audioinput" };

/** The device IDs chosen earlier: {video, audio}, each a string or null. */
export function savedDevices() {
  try {
    const saved = JSON.parse(localStorage.getItem(DEVICES_KEY) ?? "{}");
    return {
      video: typeof saved?.video === "string" ? saved.video : null,
      audio: typeof saved?.audio === "string" ? saved.audio : null,
    };
  } catch {
    return { video: null, audio: null }; // storage refused, or garbage in it
  }
}

export function saveDevice(kind, deviceId) {
  try {
    localStorage.setItem(DEVICES_KEY, JSON.stringify({ ...savedDevices(), [kind]: deviceId }));
  } catch {
    // Storage refused (a privacy setting): the choice lasts until the page closes.
  }
}

/** The cameras or microphones there are: [{deviceId, label}] (labels once one was granted). */
export async function listDevices(kind) {
  const devices = await navigator.mediaDevices.enumerateDevices();
  return devices
    .filter((d) => d.kind === DEVICE_KINDS[kind] && d.deviceId)
    .map((d, i) => ({ deviceId: d.deviceId, label: d.label || `${kind === "video" ? "Camera" : "Microphone"} ${i + 1}` }));
}

/** One track of that device. */
export async function openDevice(kind, deviceId) {
  const stream = await navigator.mediaDevices.getUserMedia({ [kind]: { deviceId: { exact: deviceId } } });
  return stream.getTracks()[0];
}

/** What getUserMedia asks for one kind: the remembered device (exact: Chromium's device
 * choice ignores an ideal one) or, with `remembered` false or nothing saved, the default. */
function wanted(kind, remembered = true) {
  const deviceId = remembered ? savedDevices()[kind] : null;
  return deviceId ? { deviceId: { exact: deviceId } } : true;
}

async function tryGetUserMedia(constraints) {
  try {
    return { stream: await navigator.mediaDevices.getUserMedia(constraints), error: null };
  } catch (error) {
    return { stream: null, error };
  }
}

/**
 * Camera and microphone if the browser gives them; whatever part of them it gives otherwise.
 * Never throws: with nothing granted the page still joins to watch. Once `signal` is aborted
 * (the person left while the browser was still asking) no further prompt is made; whatever
 * was granted is still returned, for the caller to stop.
 */
export async function openLocalMedia({ watch, signal = null }) {
  if (watch) return new LocalMedia(new MediaStream(), null);
  if (!navigator.mediaDevices?.getUserMedia) {
    const error = { name: "InsecureContext", message: "no mediaDevices" };
    return new LocalMedia(new MediaStream(), mediaErrorText(error));
  }
  let both = await tryGetUserMedia({ audio: wanted("audio"), video: wanted("video") });
  const saved = savedDevices();
  if (!both.stream && both.error?.name !== "NotAllowedError" && (saved.audio || saved.video)) {
    // A remembered device that is gone (unplugged): the defaults instead.
    both = await tryGetUserMedia({ audio: true, video: true });
  }
  if (both.stream) return new LocalMedia(both.stream, null);
  if (both.error?.name === "NotAllowedError") {
    return new LocalMedia(new MediaStream(), mediaErrorText(both.error)); // asking again is rude
  }
  // One of the two may still work (a laptop without a camera, a busy microphone).
  const tracks = [];
  for (const kind of ["video", "audio"]) {
    if (signal?.aborted) break;
    const one = await tryGetUserMedia({ [kind]: wanted(kind, false) });
    if (one.stream) tracks.push(...one.stream.getTracks());
  }
  const stream = new MediaStream(tracks);
  let problem = mediaErrorText(both.error);
  if (tracks.length) {
    const missing = stream.getVideoTracks().length ? "microphone" : "camera";
    problem = `Your ${missing} could not be started, so the others get only your ${
      missing === "camera" ? "sound" : "picture"
    }.`;
  }
  return new LocalMedia(stream, problem);
}

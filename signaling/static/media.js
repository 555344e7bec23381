// The local camera and microphone: asked for once, shared by every peer connection.

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

  stop() {
    for (const track of this.stream.getTracks()) track.stop();
  }
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
  const both = await tryGetUserMedia({ audio: true, video: true });
  if (both.stream) return new LocalMedia(both.stream, null);
  if (both.error?.name === "NotAllowedError") {
    return new LocalMedia(new MediaStream(), mediaErrorText(both.error)); // asking again is rude
  }
  // One of the two may still work (a laptop without a camera, a busy microphone).
  const tracks = [];
  for (const kind of ["video", "audio"]) {
    if (signal?.aborted) break;
    const one = await tryGetUserMedia({ [kind]: true });
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

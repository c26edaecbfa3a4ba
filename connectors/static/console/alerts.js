/*
 * Telling the agent that something happened without looking: a beep (which the agent can
 * switch off; the choice is remembered) and screen-reader announcements.
 */

import { $ } from "../lib/dom.js";
import { readStorage, writeStorage } from "../lib/storage.js";

const SOUND_KEY = "supportbot.console.sound";

let soundOn = readStorage("localStorage", SOUND_KEY) !== "off";
let audio = null;

/** Say `text` to screen readers through the page's live region. */
export function announce(text) {
  const announcer = $("announcer");
  announcer.textContent = "";
  // A fresh text node after a tick, so that repeating the same words is announced again.
  setTimeout(() => (announcer.textContent = text), 50);
}

function audioContext() {
  const Context = window.AudioContext || window.webkitAudioContext;
  if (!Context) return null;
  if (!audio) audio = new Context();
  if (audio.state === "suspended") audio.resume().catch(() => {});
  return audio;
}

/** Two short notes, unless the agent switched the sound off. */
export function beep() {
  if (!soundOn) return;
  try {
    const context = audioContext();
    if (!context) return;
    const oscillator = context.createOscillator();
    const gain = context.createGain();
    const t = context.currentTime;
    oscillator.type = "sine";
    oscillator.frequency.setValueAtTime(880, t);
    oscillator.frequency.setValueAtTime(1175, t + 0.12);
    gain.gain.setValueAtTime(0.0001, t);
    gain.gain.exponentialRampToValueAtTime(0.18, t + 0.02);
    gain.gain.exponentialRampToValueAtTime(0.0001, t + 0.3);
    oscillator.connect(gain);
    gain.connect(context.destination);
    oscillator.start(t);
    oscillator.stop(t + 0.32);
  } catch (_) {
    /* autoplay refused or no audio device: the title badge still tells */
  }
}

// Browsers only let audio start after a user gesture: take the first one to unlock it.
function unlockAudio() {
  try {
    audioContext();
  } catch (_) {
    /* no audio: nothing to unlock */
  }
  window.removeEventListener("pointerdown", unlockAudio);
  window.removeEventListener("keydown", unlockAudio);
}

function renderSound() {
  const button = $("sound");
  button.setAttribute("aria-pressed", String(soundOn));
  button.textContent = soundOn ? "Sound on" : "Sound off";
}

/** The sound toggle, and audio unlocked by the first gesture. */
export function wireAlerts() {
  $("sound").addEventListener("click", () => {
    soundOn = !soundOn;
    writeStorage("localStorage", SOUND_KEY, soundOn ? "on" : "off");
    renderSound();
    if (soundOn) beep();
  });
  window.addEventListener("pointerdown", unlockAudio);
  window.addEventListener("keydown", unlockAudio);
  renderSound();
}

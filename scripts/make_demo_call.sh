#!/usr/bin/env bash
# Makes a short two-voice support call offline, for the demo and the tests:
#   bash scripts/make_demo_call.sh OUT.wav
# Two flite voices (agent: slt, caller: awb) take turns from the script below, with small
# gaps and two short overlaps; the mix is band-limited like a phone line (300-3400 Hz,
# 8 kHz) and written as 16 kHz mono 16-bit WAV (about 26 s), the same bytes on every run.
# Needs ffmpeg and either the `flite` command (Debian package flite, installed by
# scripts/setup.sh) or an ffmpeg built with libflite (Debian's is); exit code 3 without them.
set -euo pipefail

OUT=${1:?usage: make_demo_call.sh OUT.wav}
AGENT_VOICE=${DEMO_AGENT_VOICE:-slt}
CALLER_VOICE=${DEMO_CALLER_VOICE:-awb}

# speaker|gap before the turn in seconds|text. Flite pads each turn with ~0.2 s of silence at
# both ends, so a gap of 0 leaves ~0.4 s between voices and -0.9 overlaps them by ~0.5 s.
TURNS=(
  "agent|0.3|Thank you for calling Northwind support, this is Sarah. How can I help?"
  "caller|0.1|Hi Sarah. My internet keeps dropping out since yesterday."
  "agent|-0.9|Oh, I am sorry to hear that. What is your account number?"
  "caller|0.2|It is four seven two, nine one eight."
  "agent|0.3|Thanks. I see a fault on your line, I will reset it now."
  "caller|-0.8|Great, thank you so much."
  "agent|0.1|You are welcome. Anything else I can do for you?"
  "caller|0.1|No, that is all. Goodbye."
)

command -v ffmpeg >/dev/null || { echo "make_demo_call: ffmpeg is not installed" >&2; exit 3; }
if command -v flite >/dev/null; then
  synth() { flite -voice "$1" -t "$2" -o "$3"; }
elif ffmpeg -hide_banner -filters 2>/dev/null | grep -w flite >/dev/null; then
  synth() {
    local text=${2//\'/}
    ffmpeg -hide_banner -loglevel error -y -f lavfi -i "flite=voice=$1:text='$text'" "$3"
  }
else
  echo "make_demo_call: needs flite (apt-get install flite) or an ffmpeg built with libflite" >&2
  exit 3
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

inputs=()
filters=""
labels=""
end=0
i=0
for turn in "${TURNS[@]}"; do
  IFS='|' read -r who gap text <<<"$turn"
  voice=$AGENT_VOICE; volume=1.0
  [[ $who == caller ]] && { voice=$CALLER_VOICE; volume=0.8; }
  synth "$voice" "$text" "$tmp/$i.wav"
  length=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$tmp/$i.wav")
  start=$(awk -v e="$end" -v g="$gap" 'BEGIN { s = e + g; if (s < 0) s = 0; printf "%.3f", s }')
  end=$(awk -v s="$start" -v l="$length" 'BEGIN { printf "%.3f", s + l }')
  delay_ms=$(awk -v s="$start" 'BEGIN { printf "%d", s * 1000 }')
  inputs+=(-i "$tmp/$i.wav")
  filters+="[$i:a]aresample=16000,aformat=channel_layouts=mono,volume=$volume,"
  filters+="adelay=delays=$delay_ms:all=1[t$i];"
  labels+="[t$i]"
  i=$((i + 1))
done

# Phone line: mix, band-limit to 300-3400 Hz, down to 8 kHz and back up to 16 kHz, then a
# faint line hiss and half a second of tail.
length=$(awk -v e="$end" 'BEGIN { printf "%.3f", e + 0.5 }')
filters+="${labels}amix=inputs=$i:normalize=0:duration=longest,apad=whole_dur=$length,"
filters+="highpass=f=300,highpass=f=300,lowpass=f=3400,lowpass=f=3400,"
filters+="aresample=8000,aresample=16000[speech];"
filters+="anoisesrc=color=pink:amplitude=0.002:sample_rate=16000:duration=$length:seed=7[hiss];"
filters+="[speech][hiss]amix=inputs=2:normalize=0:duration=first[out]"

mkdir -p "$(dirname "$OUT")"
ffmpeg -hide_banner -loglevel error -y "${inputs[@]}" -filter_complex "$filters" \
  -map "[out]" -ac 1 -ar 16000 -c:a pcm_s16le "$OUT"

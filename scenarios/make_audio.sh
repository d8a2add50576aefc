#!/usr/bin/env bash
# Regenerate every rep line the shipped scenarios stream, with espeak-ng and sox.
#
#   apt-get install -y espeak-ng sox     # Debian/Ubuntu
#   scenarios/make_audio.sh              # from anywhere; rewrites scenarios/audio/*/*.wav
#
# Idempotent: the same lines give byte-identical files (no dither, no timestamps in the headers).
# Output: 16 kHz mono PCM16 WAV, the wire format, so loading needs no resampling. Each line is
# trimmed of espeak's own silence and padded with 0.25 s before and 0.35 s after, so a clip's
# speech starts early and ends close to its end, like a rep who stops talking and waits. Pauses
# inside a line (espeak leaves ~0.35 s after a full stop) are shortened to 0.15 s: a voice activity
# detector ends the rep's turn after ~0.3 s of silence (the simulator's default hangover), and a
# turn must read as one utterance or the persona would answer half of it.
set -euo pipefail

cd "$(dirname "$0")"
for tool in espeak-ng sox; do
    command -v "$tool" >/dev/null || { echo "make_audio.sh: $tool not found (apt-get install -y espeak-ng sox)" >&2; exit 1; }
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# say VOICE OUT TEXT: one rep line, spoken at 165 words a minute.
say() {
    local voice=$1 out=audio/$2 text=$3
    mkdir -p "$(dirname "$out")"
    espeak-ng -v "$voice" -s 165 -w "$tmp/raw.wav" "$text"
    sox -D "$tmp/raw.wav" -r 16000 -c 1 -b 16 -e signed-integer "$tmp/out.wav" \
        silence -l 1 0.02 -50d -1 0.15 -50d reverse silence 1 0.02 -50d reverse pad 0.25 0.35
    mv "$tmp/out.wav" "$out"
    printf '%-52s %5.2f s\n' "$out" "$(soxi -D "$out")"
}

# M&A advisory: a full sales call with a founder thinking about selling.
say en-us ma-full-sale/01-opening.wav \
    "Hi Dana, this is Sam from Harbor Point Advisors. Thanks for making time today."
say en-us ma-full-sale/02-discovery.wav \
    "What is prompting you to think about selling the business in the next year or two?"
say en-us ma-full-sale/03-team.wav \
    "How important is it that your leadership team stays in place after the deal closes?"
say en-us ma-full-sale/04-fee-objection.wav \
    "I hear you on the fee. A competitive process usually adds far more to the price than it costs."
say en-us ma-full-sale/05-next-step.wav \
    "Would it make sense to set up a valuation review with our deal team next week?"
say en-us ma-full-sale/06-close.wav \
    "Great. I will send a calendar invite and a short data request this afternoon."

# Cold call: open, earn two minutes, discover, ask for a demo.
say en-us+f3 cold-call-discovery/01-opener.wav \
    "Hi Marcus, it is Jordan with Clearline. I know this is out of the blue. Do you have two minutes?"
say en-us+f3 cold-call-discovery/02-pitch.wav \
    "We help operations teams cut manual reporting. How do you build your weekly reports today?"
say en-us+f3 cold-call-discovery/03-discovery.wav \
    "How many people on your team touch that process every week?"
say en-us+f3 cold-call-discovery/04-demo.wav \
    "Would you be open to a twenty minute demo on Thursday afternoon?"

# Objection handling: price and timing push-back on a proposal.
say en-gb objection-handling/01-follow-up.wav \
    "Priya, thanks for taking the call. I wanted to follow up on the proposal we sent last week."
say en-gb objection-handling/02-price.wav \
    "I understand the price feels high. Can I ask what you are comparing it with?"
say en-gb objection-handling/03-phasing.wav \
    "If we phased the rollout over two quarters, would that fit this year's budget better?"
say en-gb objection-handling/04-pilot.wav \
    "And if timing is the real concern, we could start with a pilot in one region."
say en-gb objection-handling/05-criteria.wav \
    "What would you need to see from that pilot to move forward?"

du -sh audio

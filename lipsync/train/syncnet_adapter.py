"""The one place the trainer and the preprocessing job touch :mod:`lipsync.models.syncnet`.

* :func:`load_frozen` - one SyncNet folder (or several, for a multi-scale sync loss) as frozen supervisors;
* :func:`clip_of` - a preprocessed segment as a ``SyncClip`` (lower-half crops + log-mel aligned so
  that mel column ``4 i`` starts video frame ``i``);
* :func:`generated_sync_loss` - stage 2's sync loss on generated crops (gradients flow into them),
  over every window length a given SyncNet takes (5 and 16 frames: the multi-scale loss);
* :func:`sync_filter_from_folder` - the preprocessing job's sync filter: LSE-C confidence and offset
  computed by the evaluator's functions (:mod:`lipsync.eval.metrics`).
"""

from __future__ import annotations

import numpy as np
import torch

MEL_STEPS_PER_FRAME = 4


def _module():
    from lipsync.models import syncnet

    return syncnet


def load_frozen(folders, device) -> list:
    """SyncNets (eval mode, no gradients) from a folder or a list of folders."""
    if not folders:
        return []
    folders = [folders] if isinstance(folders, str) else list(folders)
    nets = []
    for f in folders:
        net = _module().SyncNet.from_pretrained(f, map_location=device)
        nets.append(net.eval().requires_grad_(False))
    return nets


def segment_mel(audio: np.ndarray, audio_offset: int) -> torch.Tensor:
    """log-mel of a segment's audio, columns from the segment's first frame on (4 per frame)."""
    mel = _module().log_mel(audio)
    first = int(round(audio_offset / 160))
    return torch.from_numpy(mel[:, first:])


def clip_of(segment, image_size) -> object:
    """A :class:`SyncClip` of a preprocessed segment (all its frames)."""
    m = _module()
    crops = segment.crops(0, segment.num_frames)
    return m.SyncClip(m.lower_half(crops, tuple(image_size)), segment_mel(segment.audio, segment.audio_offset))


def make_pairs(clips, batch_size: int, config, rng, max_shift: int = 15):
    return _module().make_pairs(clips, batch_size, config, rng, max_shift=max_shift)


def pair_loss(model, frames, mel, labels):
    """(loss, probabilities) of a SyncNet (possibly DDP-wrapped: its forward is called)."""
    m = _module()
    v, a = model(frames, mel)
    p = m.sync_probability(v, a)
    return torch.nn.functional.binary_cross_entropy(p, labels.to(p)), p


def generated_sync_loss(nets: list, frames: torch.Tensor, mels: list[torch.Tensor], starts: list[int],
                        windows: list[int] | None = None) -> torch.Tensor | None:
    """Mean BCE(in sync) of generated crops under frozen SyncNets.

    ``frames``: (B, F, 3, S, S) in [-1, 1] (the whole crop; the lower half is taken here), with
    gradients; ``mels[b]``: the segment's log-mel from its first frame on (:func:`segment_mel`);
    ``starts[b]``: the window's first frame in the segment. Each SyncNet of ``L`` frames scores
    every non-overlapping L-frame sub-window (L = 5 and L = 16: the multi-scale loss);
    ``windows`` restricts the lengths used. None when no SyncNet fits."""
    b, f, _, s, _ = frames.shape
    lower = frames[:, :, :, s // 2:, :]
    losses = []
    for net in nets:
        L = int(net.config.num_frames)
        if L > f or (windows and L not in windows):
            continue
        steps = L * MEL_STEPS_PER_FRAME
        vids, auds = [], []
        for i in range(b):
            for k in range(0, f - L + 1, L):
                col = (starts[i] + k) * MEL_STEPS_PER_FRAME
                mel = mels[i][:, col:col + steps]
                if mel.shape[-1] < steps:
                    continue
                vids.append(lower[i, k:k + L])
                auds.append(mel[None])
        if not vids:
            continue
        v = torch.stack(vids)
        a = torch.stack(auds).to(frames.device)
        ones = torch.ones(len(vids), device=frames.device)
        losses.append(_module().sync_loss(net, v, a, ones))
    return torch.stack(losses).mean() if losses else None


@torch.no_grad()
def sync_confidence(net, crops: np.ndarray, audio: np.ndarray, audio_offset: int, max_shift: int = 15) -> dict:
    """LSE-style {"confidence", "offset", "min_dist"} of aligned crops (F, S, S, 3) uint8 against
    their audio (``audio_offset`` samples before frame 0), with the evaluator's definitions
    (:func:`lipsync.eval.metrics.sync_distances` / :func:`~lipsync.eval.metrics.lse`): offset > 0
    when the audio is ahead of the video (the sound of frame i is at frame i - offset)."""
    from lipsync.eval.metrics import lse, sync_distances

    m = _module()
    L = int(net.config.num_frames)
    n = crops.shape[0]
    if n < L:
        return {"confidence": 0.0, "offset": 0, "min_dist": float("nan")}
    lower = m.lower_half(crops, tuple(net.config.image_size))  # (F, 3, h, w)
    mel = segment_mel(audio, audio_offset)  # column 4 j starts frame j
    steps = L * MEL_STEPS_PER_FRAME
    starts = np.arange(0, n - L + 1)
    v = net.embed_video(torch.stack([lower[i:i + L] for i in starts])).cpu().numpy()
    a_starts = range(0, (mel.shape[-1] - steps) // MEL_STEPS_PER_FRAME + 1)
    a = net.embed_audio(torch.stack([mel[:, j * MEL_STEPS_PER_FRAME:j * MEL_STEPS_PER_FRAME + steps][None]
                                     for j in a_starts])).cpu().numpy()
    shifts = tuple(range(-max_shift, max_shift + 1))
    res = lse(sync_distances(v, starts, a, shifts), shifts)
    return {"confidence": float(res["lse_c"]), "offset": int(res["offset"]), "min_dist": float(res["lse_d"])}


def sync_filter_from_folder(folder: str, max_shift: int = 15):
    """A preprocessing sync filter from a SyncNet folder (see lipsync.train.prepare.SyncFilter)."""
    net = load_frozen(folder, "cpu")[0]

    def sync_filter(crops, audio, audio_offset, fps):
        return sync_confidence(net, crops, audio, audio_offset, max_shift)

    return sync_filter

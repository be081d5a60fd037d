"""The image-text model: lmlab's Transformer fed text tokens and continuous image patches (SPEC §15.3).

- Input: ``tok_emb`` at text slots, ``Linear(p², d_model)`` of the patch vector 2v/16 - 1 at image
  slots, passed to ``Transformer.forward(embeds=...)``. Nothing is quantized on the way in.
- Positions: every sequence's slots get coordinates from the pos module's own assigner
  (``lmlab.model.pos.assign.assign_for``: flat for rope/learned/sinusoidal/alibi/none, rope2d, RoPE-Tie
  v1/v2 and M-RoPE placements), cached per layout, passed as float (B, T, A) -- half-integers survive.
- Output: the Transformer's softmax head for text; an image head (``heads.py``) on the hidden state
  ``h_t`` wherever slot t+1 is a patch ([IMG] predicts P1, Pj predicts P(j+1)); PM predicts [/IMG]
  through the text head.
- ``losses`` returns per-target quantities with the modality masks applied: text NLL only where the
  next slot is text, image NLL only where it is a patch (SPEC §15 pitfall). Rows of one batch may hold
  sub-grids of different sizes (``data.subgrid_holdout``): patches are right-padded to the batch's
  largest and ``patch_mask`` (B, M) marks the real ones; ``img_nll``/``img_loss`` are 0 at padding.

Guarantee (tests/test_multimodal_model.py): causal -- perturbing patch j leaves every text logit and
every image prediction before it unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.model.pos.assign import assign_for
from lmlab.model.transformer import Transformer
from lmlab.multimodal import digits
from lmlab.multimodal.digits import PATCH, VOCAB_SIZE, Layout
from lmlab.multimodal.heads import build_head


class ImageTextModel(nn.Module):
    def __init__(self, run):
        super().__init__()
        d = run.data
        C = run.model.d_model
        self.patch = d.patch
        self.grid = (digits.SIDE // d.patch, digits.SIDE // d.patch)
        self.transformer = Transformer(run.model, run.attention, run.pos, VOCAB_SIZE)
        self.patch_emb = nn.Linear(d.patch * d.patch, C)
        nn.init.normal_(self.patch_emb.weight, std=run.model.init_std)
        nn.init.zeros_(self.patch_emb.bias)
        t = run.task  # the head and its loss settings are the image_text task's keys
        self.image_head = build_head(t.image_head, C, d.patch * d.patch, t.fbdm_n, t.fbdm_mode, t.fbdm_gamma)
        self._positions: dict[Layout, torch.Tensor] = {}

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def cache_elems_per_token(self) -> int:
        return self.transformer.cache_elems_per_token()

    # ---------------------------------------------------------------- inputs
    def layout_positions(self, layout: Layout) -> torch.Tensor:
        layout = Layout(int(layout[0]), int(layout[1]), tuple(layout[2]))  # batch transfer may list-ify
        if layout not in self._positions:
            self._positions[layout] = assign_for(self.transformer.pos, layout.segments())  # (N, A)
        return self._positions[layout]

    def positions(self, layouts: list[Layout], T: int) -> torch.Tensor:
        """(B, T, A) float; padding slots continue each row's last position by +1 steps."""
        rows = []
        for lay in layouts:
            p = self.layout_positions(lay)
            n = p.shape[0]
            if n < T:
                pad = p[-1] + torch.arange(1, T - n + 1, dtype=p.dtype)[:, None]  # (T-n, A)
                p = torch.cat((p, pad))
            rows.append(p[:T])
        return torch.stack(rows)

    def embed(self, tokens, is_image, patches):
        """tokens (B, T), is_image (B, T), patches (B, M, P) levels -> (B, T, C)."""
        x = self.transformer.tok_emb(tokens)  # (B, T, C)
        pe = self.patch_emb(digits.to_input(patches.to(x.dtype)))  # (B, M, C)
        k = (is_image.long().cumsum(1) - 1).clamp_min(0)  # (B, T): index of the patch at each image slot
        img = pe.gather(1, k[..., None].expand(-1, -1, x.shape[-1]))  # (B, T, C)
        return torch.where(is_image[..., None], img, x)

    def forward(self, tokens, is_image, patches, layouts):
        """-> text logits (B, T, V) and final hidden states (B, T, C)."""
        T = tokens.shape[1]
        pos = self.positions(layouts, T).to(tokens.device)
        return self.transformer(embeds=self.embed(tokens, is_image, patches), positions=pos, return_hidden=True)

    # ---------------------------------------------------------------- losses
    def losses(self, batch) -> dict:
        """Per-target NLLs (nats): text (B, T) (0 where not text), image (B, M, P), plus the head penalty."""
        logits, h = self(batch["tokens"], batch["is_image"], batch["patches"], batch["layouts"])
        tgt = batch["text_target"]
        text_nll = F.cross_entropy(
            logits.float().flatten(0, 1), tgt.flatten(), ignore_index=-100, reduction="none"
        ).view_as(tgt)  # (B, T), zero where ignored
        B, M, P = batch["patches"].shape
        pm = batch.get("patch_mask")  # (B, M): rows of a sub-grid batch hold fewer than M patches
        if pm is None:
            pm = torch.ones(B, M, dtype=torch.bool, device=h.device)
        # the state before each patch, row by row in patch order (both masks are row-major with a
        # row's patches first, so the scatter keeps every row's order); zeros at padding
        h_img = h.new_zeros(B, M, h.shape[-1])
        h_img[pm] = h[batch["role"] == PATCH]
        img_nll = self.image_head.nll(h_img, batch["patches"])  # (B, M, P)
        img_loss = self.image_head.train_loss(h_img, batch["patches"], img_nll)
        keep = pm[..., None].to(img_nll.dtype)
        return {"text_nll": text_nll, "text_mask": tgt != -100, "img_nll": img_nll * keep,
                # None where the head trains on its NLL (categorical, fbdm): nothing to add
                "img_loss": None if img_loss is img_nll else img_loss * keep, "patch_mask": pm,
                "penalty": self.image_head.penalty(h_img[pm]), "logits": logits, "h_img": h_img}

    # ---------------------------------------------------------------- generation
    @torch.no_grad()
    def generate_images(self, caps: list[bytes], generator=None, temperature: float = 1.0,
                        use_cache: bool = True) -> torch.Tensor:
        """Caption-conditioned samples: [BOS] caption [IMG], then M patches drawn one by one from the head,
        each fed back through the same 2v/16 - 1 map as training inputs. -> levels (B, 8, 8).

        Runs on lmlab's one decoding loop (``lmlab.eval.generate.decode``) with the KV cache: the
        prefix once, then one patch embedding per step at its own position. Rows are decoded in groups
        of equal prefix length (captions of one template are; a batch in lockstep needs it), each
        group's patches drawn in one call per step, so one group reproduces the batched draws."""
        from lmlab.eval.generate import IncrementalForward, decode

        M, P = self.grid[0] * self.grid[1], self.patch**2
        B = len(caps)
        patches = torch.zeros(B, M, P, dtype=torch.long)
        exs = [digits.encode(c, patches[i].numpy(), digits.GENERATE) for i, c in enumerate(caps)]
        batch = digits.collate(exs, self.grid)
        T = batch["tokens"].shape[1]
        device = self.patch_emb.weight.device
        first = batch["is_image"].float().argmax(1)  # (B,): slot of patch 0, after [BOS] caption [IMG]
        for n in sorted(set(first.tolist())):
            rows = (first == n).nonzero()[:, 0]
            pos = self.positions([batch["layouts"][int(r)] for r in rows], T).to(device)  # (b, T, A)
            prefix = {"embeds": self.transformer.tok_emb(batch["tokens"][rows, :n].to(device)),
                      "positions": pos[:, :n]}
            step = iter(range(n, n + M))  # slot of the patch being fed back

            def feed(draw: torch.Tensor, step=step, pos=pos) -> dict:  # bound now: this group's slots
                t = next(step)
                x = digits.to_input(draw.to(device, self.patch_emb.weight.dtype))
                return {"embeds": self.patch_emb(x)[:, None], "positions": pos[:, t:t + 1]}

            fwd = IncrementalForward(self.transformer, use_cache, hidden=True)
            draws = decode(fwd, prefix, M, lambda out: self.image_head.sample(out[1], generator, temperature), feed)
            for j, draw in enumerate(draws):  # (b, P)
                patches[rows, j] = draw.cpu()
        return digits.unpatchify(patches, self.patch)

"""The ``.mbits`` file: a safetensors file whose metadata holds a JSON manifest.

Format version 4. Version 4 is version 3 with the four-level 2-bit quantizer (codes
``-2..1``, levels ``(c + 1/2) * scale``; see :mod:`mixbits.quant`); version 2 and 3
files are read too unless they hold a 2-bit layer, whose codes meant the ternary levels
of older releases (a clear error asks to export it again). A version 2 file is a version
3 file without structures, so it has no ``layer_groups`` and no ``group_bits``. The
safetensors metadata has two keys: ``"mixbits"``, the manifest (compact JSON), and
``"mixbits_sha256"``, one SHA-256 over the manifest text and every tensor (name,
dtype, shape and bytes, in the order below)::

    {"format_version": 4, "mixbits_version": "0.1.0", "scale_dtype": "float16", "bit_order": "little",
     "model": {"zoo": "digits_cnn", "kwargs": {...}},      # or {"import": "pkg.mod:fn", "kwargs": ...}, or null
     "input_shape": [1, 8, 8],                             # or null
     "preprocessing": {"mean": [0.5], "std": [0.25]},      # optional: see export/preprocessing.py
     "layer_fields": ["name", "kind", "shape", "bits", "aliases"],
     "layers": [["features.0", "Conv2d", [32, 1, 3, 3], 2], ...],   # aliases only for a shared weight
     "float_fields": ["module", "names", "shape"],
     "floats": [["features.1", ["weight", "bias", "running_mean", "running_var"], [32]], ...],
     "float_aliases": {"head.bias": ["tied.bias"]},       # only when a float tensor is shared
     "layer_keys": {"lstm.weight_ih_l0": ["lstm.weight_ih_l0"]},  # only when not "<name>.weight" per name
     "layer_channel_dims": {"h.0.attn.c_attn": 1},       # only for layers whose scales are not along dim 0
     "layer_groups": {"features.3": 4},                  # only for layers with bits per structure
     "float_infinite": ["h.0.attn.mask"],                # only for float tensors holding +-inf (masks)
     "promised_model_bits": 97760, "float_model_bits": 1881408}

and at most five tensors, each the concatenation of its parts in manifest order:

* ``codes``      uint8: every 1..8-bit layer's codes packed at exactly its bits
  (:mod:`mixbits.export.pack`), each layer (each run of a layer with structures, below)
  starting on a byte boundary;
* ``scales``     float16: every 1..8-bit layer's per-output-channel scales;
* ``half``       float16: every 16-bit layer's weight;
* ``float``      float32: every 32-bit layer's weight, then every ``floats`` entry
  (biases, norms, running statistics, layers kept in float);
* ``group_bits`` uint8: the bitwidth of every structure, below (only when a layer has structures).

A layer's codes and scales are those of its weight with the output-channel
dimension (``layer_channel_dims``, default 0) moved first: a Hugging Face
``Conv1D`` weight of shape (in, out) stores the codes of its (out, in) transpose
and ``out`` scales. The manifest's shape stays the state-dict shape.

Structures. A layer named in ``layer_groups`` with group size ``g`` (an integer,
1 <= g < its output channels) takes one bitwidth per *structure*: per run of ``g``
consecutive output channels (along its channel dimension; the last run may be
shorter), ``G = ceil(C / g) >= 2`` structures. Its row has bits ``0``. Its bitwidths
are in ``group_bits``: for every such layer in manifest order, ``ceil(G / 2)`` bytes of
4-bit codes, one per structure in order, low nibble first (structure ``2k`` is bits
0..3 of the layer's byte ``k``, structure ``2k + 1`` bits 4..7; an odd ``G`` leaves a zero
high nibble). A code is the index of the bitwidth in (1, 2, 3, 4, 5, 6, 7, 8, 16, 32).
Its data, with channels first (shape ``(C, ...)``):

* for each distinct bitwidth ``b`` in 1..8 its structures use, in ascending order: the
  codes of all channels whose structure has ``b``, in channel order, packed at ``b`` bits
  as one run in ``codes`` (starting on a byte boundary: at most 7 padding bits per
  distinct bitwidth), and their scales, in channel order, appended to ``scales``;
* the channels at 16 bits, in channel order, in ``half``; those at 32 bits in ``float``
  (channels-first layout, before the ``floats`` entries).

Each channel's values equal those of the whole tensor quantized at its structure's bits
(quantization is per output channel), so the file holds exactly what the cost model counts.

One tensor per kind keeps the safetensors tensor table constant in size, and the
tabular manifest keeps the header at about 1.5 KB for the default CNN and 3 KB for
a ResNet-20. Integer buffers (``num_batches_tracked``) are not
stored, as the cost model does not count them. Reading never unpickles: the
data are raw little-endian arrays and the manifest is JSON. The checksum is
checked before the manifest is parsed, and every field is checked for type and
bounds before anything is built: any damage is one :class:`MbitsFormatError`
with a short message that names the file.

What a reader accepts. The checksum catches damage, not a forger who recomputes it, so
the reader also refuses every value the exporter cannot write; a forged file that passes
is then a file the exporter could have written for another model (a model with
channels, names or statistics swapped: no check can tell it from an export). In order:

* the tensor table: each tensor one of the five above, of its dtype and 1-D, before the
  checksum reads its bytes;
* work bounds (:mod:`.bounds`): at most :data:`~.layout.MAX_TENSORS` (16,384) state-dict keys;
  the manifest's strings and elements are counted before it is parsed, its tables before
  any record is built, and each quantized layer needs at least 2 bytes of data. Reading or
  refusing a file under 16 MB takes well under a second;
* keys: layer names are unique, every state-dict key names one tensor, and a layer's
  ``layer_keys`` entries are its own names' (``<name>.weight`` or the name), one per name;
  ``layer_keys``, ``layer_channel_dims``, ``layer_groups``, ``float_aliases`` and
  ``float_infinite`` name only existing layers or float tensors;
* values (:mod:`.values`): every scale in ``[2**-14, 60000]``, the range ``quant.weight_scale``
  clamps to (finite, positive); 16-bit and 32-bit weights finite (the exporter refuses
  non-finite weights and 16-bit weights beyond float16's range); no NaN anywhere;
  BatchNorm ``running_mean``/``running_var`` (by key) finite and the variance not negative;
  +-inf only in the float tensors ``float_infinite`` lists. Decision: a buffer may
  legitimately hold -inf (an attention mask), so the exporter declares every float tensor
  that holds an infinity and the reader refuses infinities anywhere else; NaN is never
  legitimate, so the exporter refuses to write it;
* structure codes: each in 0..9 with a zero padding nibble, and the group blob as large as
  the structures need; the runs then must fill the blobs exactly. Swapping the codes of two
  structures of equal size is a channel permutation (a valid file of another model);
* on decoding, each 2..8-bit channel's largest |code| is its bitwidth's ``qmax`` (one less
  is allowed for weights below float32 precision) unless its scale sits at a clamp, as
  ``quant.weight_codes`` makes it: codes that do not belong to their scales are refused.

Names and kinds are any strings; whatever prints them (``mixbits inspect``, error messages)
escapes control characters, bidi overrides and lone surrogates (:func:`mixbits.safetext.printable`).

The code is split by concept: :mod:`.layout` (constants, error, checksum), :mod:`.records`
(the dataclasses), :mod:`.group_codes` (the 4-bit structure codes), :mod:`.writer`,
:mod:`.reader`, :mod:`.bounds`, :mod:`.validate`, :mod:`.values` and :mod:`.decode`. This module
re-exports their public names.
"""

from __future__ import annotations

from .decode import decode_state_dict
from .group_codes import pack_group_bits, unpack_group_bits
from .layout import (BLOBS, CHECKSUM_KEY, FORMAT_VERSION, METADATA_KEY, READ_VERSIONS, RECIPE_ALLOWANCE_BYTES,
                     SCALE_DTYPE, MbitsFormatError, checksum, path_repr, short_repr)
from .reader import read_mbits
from .records import Bits, FloatRecord, LayerRecord, MbitsFile, weight_key
from .writer import encode_tensors, float_records, header_bytes_bound, records_to_json, write_mbits

__all__ = ["FORMAT_VERSION", "READ_VERSIONS", "MbitsFormatError", "LayerRecord", "FloatRecord", "MbitsFile",
           "write_mbits", "read_mbits", "decode_state_dict", "records_to_json", "weight_key", "checksum",
           "float_records", "header_bytes_bound", "RECIPE_ALLOWANCE_BYTES", "pack_group_bits", "unpack_group_bits",
           "encode_tensors", "Bits", "BLOBS", "SCALE_DTYPE", "METADATA_KEY", "CHECKSUM_KEY", "short_repr", "path_repr"]

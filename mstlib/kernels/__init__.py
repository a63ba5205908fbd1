"""GPU kernels behind the fast paths: Triton (:mod:`.far_triton`, the strided far part of ``flash_split``;
:mod:`.blocksparse_triton`, the experimental block-sparse layers) and cuDNN (:mod:`.cudnn_band`, the band of
``cudnn_split``). Each imports its GPU library where it is used, so this package imports on a CPU."""

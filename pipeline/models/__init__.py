"""The networks (``nn.Module`` only) and the weights registry.

- ``unet2d.UNet2D``: the DeCoVNet lung-mask U-Net (models.md §1.3).
- ``decovnet.DeCoVNet``: the 3D COVID-19 classifier with its linearised CAM (§1.5, §1.6).
- ``r2plus1d.R2Plus1D``, ``bert.BERT5``, ``cnn_bert.CnnBert``, ``cnn_bert.CnnBertMlp``:
  3D-CNN-BERT (§2.5, §2.6).
- ``registry``: model name -> architecture, weights file, sha256, classes, input conventions.
"""

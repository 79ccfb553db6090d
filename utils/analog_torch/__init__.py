"""The torch backend: the paper's pulsed soft-bounds devices, Analog SGD and Tiki-Taka v1 in plain
PyTorch (no AIHWKit on this path), for any device torch supports and many runs batched.

- config:  settings with AIHWKit's names; ``from_aihwkit`` converts an AIHWKit RPU config
- presets: the experiments' configs (the same values as utils.rpu_configs)
- tile:    the IO pass and the pulsed update ("pulse" and "moment" modes), Tiki-Taka v1
- nn:      AnalogLinear / AnalogConv2d for R runs, converting a digital network, AnalogSGD
"""

# Chosen by the block-device-gpt element; read by the vm element's layout step.
export DIB_BLOCK_DEVICE=gpt

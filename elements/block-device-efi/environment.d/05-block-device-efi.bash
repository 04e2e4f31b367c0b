# Chosen by the block-device-efi element; read by the vm element's layout step.
export DIB_BLOCK_DEVICE=efi

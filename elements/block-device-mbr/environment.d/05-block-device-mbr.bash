# Chosen by the block-device-mbr element; read by the vm element's layout step.
export DIB_BLOCK_DEVICE=mbr

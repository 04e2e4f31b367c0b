# Block-device layout kind for the vm element: mbr by default on x86, efi elsewhere.
# A block-device-* element sets it first; DIB_BLOCK_DEVICE_CONFIG overrides it altogether.
if [ -z "${DIB_BLOCK_DEVICE:-}" ]; then
    case "${ARCH:-amd64}" in
        amd64|i386|x86_64) DIB_BLOCK_DEVICE=mbr ;;
        *) DIB_BLOCK_DEVICE=efi ;;
    esac
fi
export DIB_BLOCK_DEVICE

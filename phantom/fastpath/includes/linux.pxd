# Linux TUN/TAP and UDP offload constants (ioctls, flags, virtio-net header).
# The fallbacks cover userspace headers older than the running kernel
# (Debian 12's headers predate USO); the values are the kernel ABI.

from libc.stdint cimport uint8_t, uint16_t

cdef extern from *:
    """
    #include <linux/if_tun.h>
    #include <linux/virtio_net.h>
    #include <netinet/udp.h>
    #ifndef TUN_F_USO4
    #define TUN_F_USO4 0x20
    #endif
    #ifndef TUN_F_USO6
    #define TUN_F_USO6 0x40
    #endif
    #ifndef VIRTIO_NET_HDR_GSO_UDP_L4
    #define VIRTIO_NET_HDR_GSO_UDP_L4 5
    #endif
    #ifndef UDP_SEGMENT
    #define UDP_SEGMENT 103
    #endif
    #ifndef UDP_GRO
    #define UDP_GRO 104
    #endif
    """
    enum:
        IFF_TUN
        IFF_TAP
        IFF_NO_PI
        IFF_VNET_HDR
        IFF_MULTI_QUEUE
        TUNSETIFF
        TUNGETIFF
        TUNSETOFFLOAD
        TUNSETVNETHDRSZ
        TUN_F_CSUM
        TUN_F_TSO4
        TUN_F_TSO6
        TUN_F_USO4
        TUN_F_USO6
        VIRTIO_NET_HDR_F_NEEDS_CSUM
        VIRTIO_NET_HDR_GSO_NONE
        VIRTIO_NET_HDR_GSO_TCPV4
        VIRTIO_NET_HDR_GSO_TCPV6
        VIRTIO_NET_HDR_GSO_UDP_L4
        UDP_SEGMENT
        UDP_GRO

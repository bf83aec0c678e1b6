/* PVH guest that attacks the virtio-mmio console like a broken or hostile
 * driver, one phase at a time, bringing the device up afresh for each:
 * descriptor chains that loop, point outside guest memory, carry huge
 * lengths or link out of the table; a bogus avail index; rings outside
 * memory; a notify storm; a reset with a transfer pending. Each broken
 * phase must leave the device in DEVICE_NEEDS_RESET (never a VMM panic).
 * Then it transmits "after reset\n" and finally an endless line (4 KiB
 * chains of 'x', no newline) until the host ends the VM. Long phases
 * print "." to the serial port as progress markers: every 1024 storm
 * rounds, and every 256 chains (1 MiB) of the endless line.
 * Registers and queue setup are shared with virtio_console_pvh.S
 * (virtio_mmio.inc). */
    .include "pvh_head.inc"

    .include "virtio_mmio.inc"
    .set NEEDS_RESET, 0x40
    .set QSIZE, 8
    .set RXQ, 0x200000
    .set TXQ, 0x210000
    .set RXBUF, 0x300000
    .set F_NEXT, 1
    .set F_WRITE, 2

/* TX descriptor \i: address lo/hi, length, flags, next. */
.macro TXDESC i, lo, hi, len, flags, next
    movl \lo, TXQ + 16 * \i + 0
    movl \hi, TXQ + 16 * \i + 4
    movl \len, TXQ + 16 * \i + 8
    movw \flags, TXQ + 16 * \i + 12
    movw \next, TXQ + 16 * \i + 14
.endm

/* Offer head \head as TX avail entry 0 and notify the TX queue. */
.macro TXKICK head
    movw \head, TXQ + 0x1000 + 4
    movw $1, TXQ + 0x1000 + 2
    movl $1, VIRTIO + R_QUEUE_NOTIFY
.endm

.macro EXPECT_BROKEN name
    testl $NEEDS_RESET, VIRTIO + R_STATUS
    jz fail
    PRINT "\name: needs reset\n"
.endm

pvh_start:
    mov $0x80000, %esp

    /* 1. A two-descriptor loop (0 -> 1 -> 0). */
    call bringup
    TXDESC 0, $txmsg, $0, $4, $F_NEXT, $1
    TXDESC 1, $txmsg, $0, $4, $F_NEXT, $0
    TXKICK $0
    EXPECT_BROKEN "loop"

    /* 2. A buffer at 64 GiB, far outside the 64 MiB of RAM. */
    call bringup
    TXDESC 0, $0, $0x10, $16, $0, $0
    TXKICK $0
    EXPECT_BROKEN "outside"

    /* 3. A 4 GiB - 1 length. */
    call bringup
    TXDESC 0, $txmsg, $0, $0xffffffff, $0, $0
    TXKICK $0
    EXPECT_BROKEN "huge"

    /* 4. `next` out of the table. */
    call bringup
    TXDESC 0, $txmsg, $0, $4, $F_NEXT, $200
    TXKICK $0
    EXPECT_BROKEN "next"

    /* 5. A device-writable buffer on the transmit queue. */
    call bringup
    TXDESC 0, $txmsg, $0, $4, $F_WRITE, $0
    TXKICK $0
    EXPECT_BROKEN "direction"

    /* 6. avail.idx 100 ahead of a queue of 8. */
    call bringup
    TXDESC 0, $txmsg, $0, $4, $0, $0
    movw $100, TXQ + 0x1000 + 2
    movl $1, VIRTIO + R_QUEUE_NOTIFY
    EXPECT_BROKEN "avail"

    /* 7. Rings outside memory, refused at DRIVER_OK. */
    call negotiate
    movl $1, VIRTIO + R_QUEUE_SEL
    movl $QSIZE, VIRTIO + R_QUEUE_NUM
    movl $0, VIRTIO + R_DESC_LO
    movl $0x100, VIRTIO + R_DESC_HI
    movl $0, VIRTIO + R_AVAIL_LO
    movl $0x100, VIRTIO + R_AVAIL_HI
    movl $0, VIRTIO + R_USED_LO
    movl $0x100, VIRTIO + R_USED_HI
    movl $1, VIRTIO + R_QUEUE_READY
    movl $0xf, VIRTIO + R_STATUS
    EXPECT_BROKEN "rings"

    /* 8. Notify storm: 10000 rounds of notifies on an empty queue, on
     * queues that do not exist, and interrupt acks; the device stays up. */
    call bringup
    mov $10000, %ecx
1:  movl $1, VIRTIO + R_QUEUE_NOTIFY
    movl $0, VIRTIO + R_QUEUE_NOTIFY
    mov %ecx, VIRTIO + R_QUEUE_NOTIFY
    movl $0xffffffff, VIRTIO + R_INT_ACK
    test $1023, %ecx
    jnz 3f
    PRINT "."                       /* progress marker */
3:  dec %ecx
    jnz 1b
    cmpl $0xf, VIRTIO + R_STATUS
    jne fail
    PRINT "storm: still live\n"

    /* 9. Reset with a transfer pending: a chain is offered, the device is
     * reset before the notify, so nothing may reach the host; then a clean
     * bring-up transmits "after reset\n" once. */
    call bringup
    TXDESC 0, $stale, $0, $(stale_end-stale), $0, $0
    movw $0, TXQ + 0x1000 + 4
    movw $1, TXQ + 0x1000 + 2
    movl $0, VIRTIO + R_STATUS
    movl $1, VIRTIO + R_QUEUE_NOTIFY
    call bringup
    TXDESC 0, $txmsg, $0, $(txmsg_end-txmsg), $0, $0
    TXKICK $0
    cmpl $0xf, VIRTIO + R_STATUS
    jne fail
    cmpw $1, TXQ + 0x2000 + 2       /* used.idx */
    jne fail
    PRINT "reset: ok\n"

    /* 10. An endless line, until the host ends the VM. */
    PRINT "endless\n"
    TXDESC 0, $xs, $0, $4096, $0, $0
    xor %ecx, %ecx
2:  mov %ecx, %eax
    and $QSIZE - 1, %eax
    movw $0, TXQ + 0x1000 + 4(, %eax, 2)
    inc %ecx
    movw %cx, TXQ + 0x1000 + 2
    movl $1, VIRTIO + R_QUEUE_NOTIFY
    test $255, %ecx
    jnz 2b
    PRINT "."                       /* 1 MiB more offered */
    jmp 2b

fail:
    PRINT "hostile FAILED status="
    mov VIRTIO + R_STATUS, %eax
    call puthex
    call nl
    jmp reset

/* Reset, zero both queues' rings, negotiate, set up RX and TX, DRIVER_OK. */
bringup:
    call negotiate
    push %ecx
    push %edi
    SETUP_QUEUES RXQ, fail
    pop %edi
    pop %ecx
    movl $0xf, VIRTIO + R_STATUS
    cmpl $0xf, VIRTIO + R_STATUS
    jne fail
    ret

/* Reset, clear the rings, ACKNOWLEDGE, DRIVER, VERSION_1, FEATURES_OK. */
negotiate:
    movl $0, VIRTIO + R_STATUS
    push %ecx
    push %edi
    xor %eax, %eax
    mov $RXQ, %edi
    mov $0x3000 / 4, %ecx
    rep stosl
    mov $TXQ, %edi
    mov $0x3000 / 4, %ecx
    rep stosl
    pop %edi
    pop %ecx
    movl $1, VIRTIO + R_STATUS
    movl $3, VIRTIO + R_STATUS
    movl $1, VIRTIO + R_DRV_FEATURES_SEL
    movl $1, VIRTIO + R_DRV_FEATURES
    movl $0xb, VIRTIO + R_STATUS
    testl $8, VIRTIO + R_STATUS
    jz fail
    ret

    .data
txmsg:
    .ascii "after reset\n"
txmsg_end:
stale:
    .ascii "stale chain sent after reset\n"
stale_end:
    .balign 64
xs:
    .fill 4096, 1, 'x'

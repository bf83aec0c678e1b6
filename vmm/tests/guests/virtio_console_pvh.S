/* PVH guest that drives the virtio-mmio console at 0xd0000000 (IRQ 5) like
 * a real driver: reset, ACKNOWLEDGE, DRIVER, feature negotiation with
 * VERSION_1, FEATURES_OK check, queue setup, DRIVER_OK; then it posts a
 * receive buffer, transmits a line, and waits (hlt) for the used-buffer
 * interrupt routed IOAPIC pin 5 -> vector 0x30 before printing what it got. */
    .include "pvh_head.inc"

    .include "virtio_mmio.inc"
    .set QSIZE, 8
    /* Queue memory: RX at 0x200000, TX at 0x210000 (desc, +0x1000 avail, +0x2000 used). */
    .set RXQ, 0x200000
    .set TXQ, 0x210000
    .set RXBUF, 0x300000
    .set IOAPIC, 0xfec00000
    .set LAPIC, 0xfee00000
    .set VECTOR, 0x30

pvh_start:
    mov $0x80000, %esp
    cli
    mov $0xff, %al              /* mask both PICs: interrupts via the IOAPIC only */
    out %al, $0x21
    out %al, $0xa1

    /* IDT entry for VECTOR: 32-bit interrupt gate to irq_handler. */
    mov $irq_handler, %eax
    mov $idt + VECTOR * 8, %edi
    mov %ax, 0(%edi)
    mov %cs, %bx
    mov %bx, 2(%edi)
    movw $0x8e00, 4(%edi)
    shr $16, %eax
    mov %ax, 6(%edi)
    lidt idt_ptr

    /* LAPIC on, IOAPIC pin 5 -> VECTOR, edge, fixed, to APIC 0. */
    movl $0x1ff, LAPIC + 0xf0
    movl $0, LAPIC + 0x80
    movl $0x1b, IOAPIC
    movl $0, IOAPIC + 0x10
    movl $0x1a, IOAPIC
    movl $VECTOR, IOAPIC + 0x10

    /* Identify. */
    cmpl $0x74726976, VIRTIO + R_MAGIC
    jne fail
    cmpl $2, VIRTIO + R_VERSION
    jne fail
    cmpl $3, VIRTIO + R_DEVICE_ID
    jne fail
    PRINT "virtio-console found\n"

    /* Reset, ACKNOWLEDGE, DRIVER. */
    movl $0, VIRTIO + R_STATUS
    movl $1, VIRTIO + R_STATUS
    movl $3, VIRTIO + R_STATUS
    /* Features: require VERSION_1 (bit 32), accept nothing else. */
    movl $1, VIRTIO + R_DEV_FEATURES_SEL
    testl $1, VIRTIO + R_DEV_FEATURES
    jz fail
    movl $0, VIRTIO + R_DRV_FEATURES_SEL
    movl $0, VIRTIO + R_DRV_FEATURES
    movl $1, VIRTIO + R_DRV_FEATURES_SEL
    movl $1, VIRTIO + R_DRV_FEATURES
    movl $0xb, VIRTIO + R_STATUS
    testl $8, VIRTIO + R_STATUS
    jz fail
    PRINT "features ok\n"

    /* Queues 0 (RX) and 1 (TX). */
    SETUP_QUEUES RXQ, fail
    movl $0xf, VIRTIO + R_STATUS   /* DRIVER_OK */
    cmpl $0xf, VIRTIO + R_STATUS
    jne fail
    PRINT "driver ok\n"

    /* Post one 64-byte receive buffer: desc 0, device-writable. */
    movl $RXBUF, RXQ + 0
    movl $0, RXQ + 4
    movl $64, RXQ + 8
    movw $2, RXQ + 12
    movw $0, RXQ + 14
    movw $0, RXQ + 0x1000 + 4       /* avail.ring[0] = 0 */
    movw $1, RXQ + 0x1000 + 2       /* avail.idx = 1 */
    movl $0, VIRTIO + R_QUEUE_NOTIFY

    /* Transmit one line: desc 0, device-readable. */
    movl $txmsg, TXQ + 0
    movl $0, TXQ + 4
    movl $txmsg_end - txmsg, TXQ + 8
    movw $0, TXQ + 12
    movw $0, TXQ + 0x1000 + 4
    movw $1, TXQ + 0x1000 + 2
    movl $1, VIRTIO + R_QUEUE_NOTIFY
    PRINT "tx sent\n"

    /* Wait until the receive buffer came back and an interrupt was taken. */
wait_rx:
    cli
    cmpw $0, RXQ + 0x2000 + 2       /* used.idx */
    je 6f
    cmpl $0, irq_count              /* and at least one interrupt taken */
    jne 3f
6:  sti
    hlt
    jmp wait_rx
3:  PRINT "rx="
    mov RXQ + 0x2000 + 8, %ecx      /* used.ring[0].len */
    mov $RXBUF, %esi
4:  test %ecx, %ecx
    jz 5f
    lodsb
    call putc
    dec %ecx
    jmp 4b
5:  PRINT "irqs="
    mov irq_count, %eax
    call puthex
    call nl
    PRINT "txused="
    movzwl TXQ + 0x2000 + 2, %eax
    call puthex
    call nl
    jmp reset

fail:
    PRINT "virtio FAILED status="
    mov VIRTIO + R_STATUS, %eax
    call puthex
    call nl
    jmp reset

/* Interrupts are only ever enabled at the `sti; hlt` of the wait loop, so
 * the handler drops its frame and resumes that loop instead of executing a
 * 32-bit iret, which PVM's CPL0 emulator does not implement. */
irq_handler:
    mov VIRTIO + R_INT_STATUS, %eax
    mov %eax, VIRTIO + R_INT_ACK
    incl irq_count
    movl $0, LAPIC + 0xb0           /* EOI */
    add $12, %esp                   /* EIP, CS, EFLAGS */
    jmp wait_rx

    .data
    .balign 8
idt_ptr:
    .word 256 * 8 - 1
    .long idt
irq_count:
    .long 0
txmsg:
    .ascii "ping from guest\n"
txmsg_end:
    .balign 8
idt:
    .fill 256 * 8, 1, 0

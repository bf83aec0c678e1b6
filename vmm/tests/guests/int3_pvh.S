/* PVH guest that executes int3 with an empty IDT. On hardware KVM this is
 * a triple fault; PVM's CPL0 emulator cannot deliver it and reports
 * KVM_EXIT_INTERNAL_ERROR, which is how a stock kernel dies there. */
    .include "pvh_head.inc"
pvh_start:
    mov $0x80000, %esp
    lidt empty_idt
    int3
    jmp reset
empty_idt:
    .word 0
    .long 0

/* PVH guest that triple faults: with an empty IDT, ud2 escalates to a
 * double and then a triple fault. */
    .text
    .code32
    .globl pvh_start
    jmp pvh_start
    .include "lib32.inc"
    PVH_NOTE pvh_start
pvh_start:
    mov $0x80000, %esp
    PRINT "about to fault\n"
    lidt empty_idt
    ud2
    PRINT "survived?!\n"
    jmp reset
empty_idt:
    .word 0
    .long 0

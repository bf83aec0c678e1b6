/* PVH guest for the snapshot tests: counts forever, printing
 * "n=XXXXXXXX\n" (the counter, kept in guest RAM) after a delay loop (its
 * counter in a register). A restored guest must go on from the saved
 * count, so the serial output before and after the snapshot, concatenated,
 * is one unbroken sequence n=00000001, n=00000002, ... */
    .include "pvh_head.inc"
pvh_start:
    mov $0x80000, %esp
1:  incl count
    PRINT "n="
    mov count, %eax
    call puthex
    call nl
    mov $2000, %ecx
2:  dec %ecx
    jnz 2b
    jmp 1b

    .data
    .balign 4
count:
    .long 0

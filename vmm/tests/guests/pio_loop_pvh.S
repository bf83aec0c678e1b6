/* PVH guest for the port-I/O exit benchmark: 200000 writes to the POST
 * port 0x80 (each one a KVM_EXIT_IO handled by the VMM), then reset. */
    .text
    .code32
    .globl pvh_start
    jmp pvh_start
    .include "lib32.inc"
    PVH_NOTE pvh_start
pvh_start:
    mov $0x80000, %esp
    mov $200000, %ecx
1:  out %al, $0x80
    dec %ecx
    jnz 1b
    PRINT "pio done\n"
    jmp reset

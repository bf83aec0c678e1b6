/* PVH guest for the port-I/O exit benchmark: 200000 writes to the POST
 * port 0x80 (each one a KVM_EXIT_IO handled by the VMM), then reset. */
    .include "pvh_head.inc"
pvh_start:
    mov $0x80000, %esp
    mov $200000, %ecx
1:  out %al, $0x80
    dec %ecx
    jnz 1b
    PRINT "pio done\n"
    jmp reset

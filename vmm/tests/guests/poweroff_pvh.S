/* PVH guest that powers off the way Linux's acpi_power_off does on a
 * hardware-reduced platform: SLP_TYP=5 | SLP_EN to the FADT sleep control
 * register (I/O port 0x600). */
    .include "pvh_head.inc"
pvh_start:
    mov $0x80000, %esp
    PRINT "powering off\n"
    mov $0x600, %dx
    mov $(5 << 2) | (1 << 5), %al
    out %al, %dx
1:  hlt
    jmp 1b

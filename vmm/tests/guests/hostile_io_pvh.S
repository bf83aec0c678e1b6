/* PVH guest that writes and reads where no device is: 20000 rounds of a
 * random port (outside COM1, the ACPI PM block and the PCI config/reset
 * ports, so it cannot end the VM by accident) and a random address in the
 * 32-bit MMIO gap (outside the virtio window, IOAPIC, LAPIC and the KVM
 * TSS/identity map at the top). Every access is a VM exit the VMM must
 * answer without panicking. A "." every 1024 rounds shows progress (the
 * tests bound the guest by a stall in its output, not by wall-clock
 * time). Then "io done" and reset. */
    .include "pvh_head.inc"
    .set ROUNDS, 20000
pvh_start:
    mov $0x80000, %esp
    PRINT "io start\n"
    mov $0x2545f491, %ebx          /* xorshift32 state */
    mov $ROUNDS, %ebp
round:
    call rand
    /* Port 0x100..0xffff. */
    mov %ebx, %edx
    and $0xffff, %edx
    cmp $0x100, %edx
    jb mmio
    cmp $0x3f8, %edx
    jb 1f
    cmp $0x3ff, %edx
    jbe mmio
1:  mov %edx, %eax
    and $0xfff8, %eax
    cmp $0x600, %eax
    je mmio
    cmp $0xcf8, %eax
    je mmio
    mov %ebx, %eax
    shr $16, %eax
    outl %eax, %dx                  /* 32-bit write nobody claims */
    inb %dx, %al                    /* and reads of all widths */
    inw %dx, %ax
    inl %dx, %eax
mmio:
    call rand
    mov %ebx, %edi
    and $0x3ffffffc, %edi
    or $0xc0000000, %edi
    mov %edi, %eax
    and $0xfffff000, %eax
    cmp $0xd0000000, %eax
    je next
    cmp $0xfec00000, %eax
    je next
    cmp $0xfee00000, %eax
    je next
    cmp $0xfff00000, %eax
    jae next
    mov %ebx, (%edi)
    movb %bl, 1(%edi)
    mov (%edi), %eax
    movzwl 2(%edi), %eax
next:
    test $1023, %ebp
    jnz 2f
    PRINT "."                       /* progress marker */
2:  dec %ebp
    jnz round
    PRINT "io done\n"
    jmp reset

/* xorshift32 in %ebx. */
rand:
    mov %ebx, %eax
    shl $13, %eax
    xor %eax, %ebx
    mov %ebx, %eax
    shr $17, %eax
    xor %eax, %ebx
    mov %ebx, %eax
    shl $5, %eax
    xor %eax, %ebx
    ret

#!/bin/bash
# ublkctl add / list / info / del for every backend type against a running
# daemon with no drop-ins: add prints the block device, the device works,
# list --json and info --json describe it as docs/admin-api.md says, the
# list table shows it, and del removes it from the kernel.
# vm-timeout: 150
. "${BASH_SOURCE%/*}/../lib.sh"

require_cmd jq dd sha256sum cmp

cfg=$CASE_DIR/config
mkdir -p "$cfg/devices.d"
start_ublkd_api "$cfg"

img=$CASE_DIR/disk0.img # /tmp is tmpfs in the VM

# check_object JSON NAME TYPE SIZE DEV: the fields docs/admin-api.md promises,
# all read by one jq (processes are slow to start under TCG).
check_object() {
    local j=$1 name=$2 type=$3 size=$4 dev=$5 got want k
    got=$(jq -r '[([keys[]] | sort | join(",")), .name, .state, .backend.type, (.size | type),
        .size, .block_device, "/dev/ublkb\(.id)", .queues, .queue_depth,
        .logical_block_size, .read_only, .persistent, .backend.path // "-",
        (.backend.direct_io | tostring)] | join(" ")' <<<"$j") || fail "$name: not a device object: $j"
    for k in name id state backend size queues queue_depth logical_block_size read_only \
        block_device persistent source; do
        [[ ,${got%% *}, == *,$k,* ]] || fail "$name: device object lacks \"$k\": $j"
    done
    want="$name live $type number $size $dev $dev 2 32 4096 false false"
    if [[ $type == file ]]; then want+=" $img true"; else want+=" - null"; fi
    [[ ${got#* } == "$want" ]] || fail "$name: device object is
  ${got#* }, want
  $want
  ($j)"
}

declare -A dev=()
# name type size(bytes) add-options...
while read -r name type size opts; do
    # Word splitting of $opts is intended: they are options.
    # shellcheck disable=SC2086
    dev[$name]=$(ctl_ok add "$name" --backend "$type" --size "$size" $opts \
        --queues 2 --depth 32 --block-size 4096)
    [[ ${dev[$name]} =~ ^/dev/ublkb[0-9]+$ ]] || fail "add $name printed '${dev[$name]}', not a block device"
    [[ -b ${dev[$name]} ]] || fail "add $name printed ${dev[$name]}, which does not exist"
    (($(dev_size "${dev[$name]}") == size)) || fail "$name: ${dev[$name]} has the wrong size"
    check_object "$(ctl_ok --json info "$name")" "$name" "$type" "$size" "${dev[$name]}"
    log "$name ($type) live at ${dev[$name]}"
done <<EOF_DEVS
m0 mem 67108864
f0 file 33554432 --path $img --create
n0 null 1099511627776
EOF_DEVS

# The file device was created at the requested size, sparse.
[[ $(stat -c %s "$img") == 33554432 ]] || fail "$img is $(stat -c %s "$img") bytes"

# list --json: an array with all three, each described as info describes it.
list=$(ctl_ok --json list)
[[ $(json_get "$list" 'type + ": " + (map(.name) | join(" "))') == "array: f0 m0 n0" ]] ||
    fail "list --json is not an array of f0 m0 n0: $list"
check_object "$(json_get "$list" '.[0]')" f0 file 33554432 "${dev[f0]}"
check_object "$(json_get "$list" '.[1]')" m0 mem 67108864 "${dev[m0]}"
check_object "$(json_get "$list" '.[2]')" n0 null 1099511627776 "${dev[n0]}"

# The table: a header and one aligned row per device, sizes human-readable.
table=$(ctl_ok list)
printf '%s\n' "$table" >&2
read -r -a header <<<"$(head -n 1 <<<"$table")"
[[ ${header[*]} == "NAME ID STATE BACKEND SIZE QUEUES DEPTH DEVICE" ]] || fail "list header: ${header[*]}"
grep -Eq "^m0 +[0-9]+ +live +mem +64(\.0)?M(iB)? +2 +32 +${dev[m0]}\$" <<<"$table" || fail "m0 row wrong"
grep -Eq "^n0 +[0-9]+ +live +null +1(\.0)?T(iB)? +2 +32 +${dev[n0]}\$" <<<"$table" || fail "n0 row wrong"
grep -Eq "^f0 +[0-9]+ +live +file +32(\.0)?M(iB)? " <<<"$table" || fail "f0 row wrong"
# Columns line up: DEVICE starts at the same offset in every line.
offsets=$(awk '{ print index($0, $NF) }' <<<"$table" | sort -u | wc -l)
((offsets == 1)) || fail "the DEVICE column is not aligned"

# Data goes through each device: write 1 MiB at 1 MiB, read it back. The
# null device reads back zeros whatever was written.
dd if=/dev/urandom of="$CASE_DIR/pat" bs=1M count=1 status=none
for n in m0 f0; do
    dd if="$CASE_DIR/pat" of="${dev[$n]}" bs=1M seek=1 oflag=direct conv=fsync status=none
    dd if="${dev[$n]}" of="$CASE_DIR/back" bs=1M skip=1 count=1 iflag=direct status=none
    cmp -s "$CASE_DIR/pat" "$CASE_DIR/back" || fail "$n did not read back what was written"
done
dd if="$CASE_DIR/pat" of="${dev[n0]}" bs=1M seek=1 oflag=direct status=none
dd if="${dev[n0]}" of="$CASE_DIR/back" bs=1M skip=1 count=1 iflag=direct status=none
cmp -s -n 1048576 /dev/zero "$CASE_DIR/back" || fail "n0 did not read zeros"
# The file holds the data at the same offset.
dd if="$img" of="$CASE_DIR/back" bs=1M skip=1 count=1 status=none
cmp -s "$CASE_DIR/pat" "$CASE_DIR/back" || fail "$img does not hold what f0 wrote"

# features: the kernel's bits by name; --json has the value.
feat=$(ctl_ok features)
printf '%s\n' "$feat" | head -n 4 >&2
grep -q "CMD_IOCTL_ENCODE" <<<"$feat" || fail "features does not name CMD_IOCTL_ENCODE: $feat"
fj=$(ctl_ok --json features)
[[ $(json_get "$fj" '(.value | type) + " " + (.hex | startswith("0x") | tostring)') == "number true" ]] ||
    fail "features --json: $fj"
ver=$(ctl_ok version)
[[ $ver == *"ublkctl "*"ublkd "* ]] || fail "version: $ver"

# del: gone from the kernel and from list; a second del is not-found.
for n in m0 f0 n0; do
    out=$(ctl_ok del "$n")
    [[ -z $out ]] || log "del $n printed: $out"
    for _ in $(seq 50); do [[ -e ${dev[$n]} ]] || break; sleep 0.1; done
    [[ ! -e ${dev[$n]} ]] || fail "${dev[$n]} still exists after del $n"
done
err=$(ctl_err del m0)
[[ $err == *"no device named m0"* ]] || fail "second del m0: $err"
list=$(ctl_ok --json list)
[[ $list == "[]" ]] || fail "list after del: $list"

# The image survives the device, with its data.
[[ -f $img ]] || fail "$img removed with the device"

stop_ublkd 20
assert_no_ublk_devices
log "ublkctl round trip passed"

# brokers.sh: which brokers a side-by-side MQTT benchmark runs, and a free
# port for each, sourced by bench-mqtt.sh, bench-scale.sh and bench-bridge.sh.
#
#   select_brokers PROGRAM "LIST"   LIST: some of mosquitto nats switchboard,
#                                   space- or comma-separated; empty: all
# sets the array `brokers` (in that order) or exits 2 naming PROGRAM;
#   wanted NAME                     0 if NAME is among them
#   free_port                       prints a loopback port nobody listens on

select_brokers() {
    local prog=$1 only=${2//,/ } name
    for name in $only; do
        case $name in
        mosquitto | nats | switchboard) ;;
        *) echo "$prog: --only: some of mosquitto nats switchboard, not $name" >&2; exit 2 ;;
        esac
    done
    brokers=()
    for name in mosquitto nats switchboard; do
        case " ${only:-mosquitto nats switchboard} " in *" $name "*) brokers+=("$name") ;; esac
    done
}

wanted() {
    case " ${brokers[*]} " in *" $1 "*) return 0 ;; esac
    return 1
}

# Below the ephemeral range: client sockets (a scale run's thousands, and
# other programs' on this machine) take their ports from that range, where a
# broker started next could find its port in use.
ephemeral_low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
free_port() {
    local p
    while :; do
        p=$((10000 + (RANDOM * 32768 + RANDOM) % (ephemeral_low - 10000)))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

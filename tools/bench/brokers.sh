# brokers.sh: which brokers a side-by-side MQTT benchmark runs, sourced by
# bench-mqtt.sh and bench-scale.sh.
#
#   select_brokers PROGRAM "LIST"   LIST: some of mosquitto nats switchboard,
#                                   space- or comma-separated; empty: all
# sets the array `brokers` (in that order) or exits 2 naming PROGRAM;
#   wanted NAME                     0 if NAME is among them

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

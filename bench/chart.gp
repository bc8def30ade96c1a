# Clustered bars: per job, each ublkd device's IOPS over its kernel
# counterpart's, with the targets as lines. Called by bench/run.sh with
# datafile, outfile and kernel set.
set terminal pngcairo size 1280,560 font ",10" noenhanced
set output outfile
set title sprintf("ublkd / kernel device, IOPS ratio (kernel %s, same VM run)", kernel)
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.8 border -1
set boxwidth 0.9
set datafile separator "\t"
set datafile missing "-"
set yrange [0:*]
set ylabel "ratio"
set xtics rotate by -30
set grid ytics
set key outside right top
set arrow from graph 0, first 0.95 to graph 1, first 0.95 nohead dt 2 lc rgb "#555555"
set arrow from graph 0, first 0.90 to graph 1, first 0.90 nohead dt 3 lc rgb "#999999"
plot datafile using 2:xtic(1) title "null / null_blk", \
     '' using 3 title "mem / brd", \
     '' using 4 title "file / brd"
